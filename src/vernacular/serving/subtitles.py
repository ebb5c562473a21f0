"""SubRip (.srt) and WebVTT (.vtt) subtitles from a transcript's timed segments."""

from __future__ import annotations

SUBTITLE_FORMATS = ("srt", "vtt")


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(segments: list[dict]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = " ".join(str(seg.get("text") or "").split())
        if text:  # an empty segment (silence) gets no cue; "-->" cannot appear in a cue's text
            cues.append((float(seg["start"]), max(float(seg["end"]), float(seg["start"])), text.replace("-->", "->")))
    return cues


def to_srt(segments: list[dict]) -> str:
    return "".join(f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n\n"
                   for i, (start, end, text) in enumerate(_cues(segments), 1))


def to_vtt(segments: list[dict]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n\n"
                                  for start, end, text in _cues(segments))


def subtitles(segments: list[dict], fmt: str) -> str:
    if fmt not in SUBTITLE_FORMATS:
        raise ValueError(f"subtitle format must be one of {list(SUBTITLE_FORMATS)}, got {fmt!r}")
    return to_srt(segments) if fmt == "srt" else to_vtt(segments)
