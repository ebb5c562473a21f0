"""The bad-input zoo: every kind of broken row seen so far, as real files beside good rows.

`write_zoo(folder, clips)` writes `folder/manifest.csv` (and the audio it names) and returns
{utterance_id or "line N": expected} where expected is None for a row that must be kept, else a
fragment of its quarantine reason ("line N" for rows that cannot be parsed into a record). `write_tsv_zoo` does the same for a TSV whose transcript starts with a quote.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


def _tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def write_zoo(folder: Path, clips: list[tuple[str, np.ndarray]]) -> dict[str, str | None]:
    """`clips`: (text, 16 kHz audio) of real sentences, used for the good rows."""
    audio = folder / "audio"
    audio.mkdir(parents=True)
    rows: list[dict] = []
    expected: dict[str, str | None] = {}

    def add(uid: str, path: str, text: str, outcome: str | None, **extra) -> None:
        rows.append({"utterance_id": uid, "audio_path": path, "text": text, "speaker": "zoo", **extra})
        expected[uid] = outcome

    for i, (text, clip) in enumerate(clips):
        sf.write(audio / f"good{i}.wav", clip, RATE, subtype="PCM_16")
        add(f"good{i}", f"audio/good{i}.wav", text, None)
    text0, clip0 = clips[0]
    # kept: a 44.1 kHz stereo FLAC (resampled, downmixed), an absolute path outside the manifest's folder
    stereo = np.stack([np.interp(np.arange(int(len(clip0) * 44100 / RATE)) * RATE / 44100,
                                 np.arange(len(clip0)), clip0)] * 2, axis=1).astype(np.float32)
    sf.write(audio / "stereo44k.flac", stereo, 44100)
    add("stereo44k", "audio/stereo44k.flac", text0, None)
    elsewhere = folder.parent / f"{folder.name}-elsewhere"
    elsewhere.mkdir()
    sf.write(elsewhere / "own.wav", clip0, RATE, subtype="PCM_16")
    add("absolute_elsewhere", str(elsewhere / "own.wav"), text0, None)
    # transcripts
    add("empty_text", "audio/good0.wav", "", "missing transcript")
    add("punctuation_only", "audio/good0.wav", "...!?", "no words")
    add("emoji_only", "audio/good0.wav", "\U0001F642\U0001F642", "no words")
    sf.write(audio / "four_seconds.wav", _tone(4.0), RATE, subtype="PCM_16")
    add("long_transcript", "audio/four_seconds.wav", " ".join(["word"] * 2000), "transcript does not fit the audio")
    # paths
    add("missing_file", "audio/nope.wav", text0, "audio file not found")
    add("a_directory", "audio", text0, "is a directory")
    os.symlink(audio / "gone.wav", audio / "dangling.wav")
    add("dangling_link", "audio/dangling.wav", text0, "symbolic link")
    sf.write(folder.parent / f"{folder.name}-outside.wav", clip0, RATE, subtype="PCM_16")
    add("escapes_root", f"../{folder.name}-outside.wav", text0, "outside the corpus root")
    # content
    (audio / "corrupt.wav").write_bytes(os.urandom(2048))
    add("corrupt", "audio/corrupt.wav", text0, "cannot decode audio")
    (audio / "empty.wav").write_bytes(b"")
    add("empty_file", "audio/empty.wav", text0, "cannot decode audio")
    sf.write(audio / "whole.wav", _tone(4.34), RATE, subtype="PCM_16")
    data = (audio / "whole.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(data[:len(data) // 2])
    add("truncated", "audio/truncated.wav", "the lungs are clear today", "truncated WAV")
    sf.write(audio / "dc.wav", np.full(RATE * 2, 0.25, np.float32), RATE, subtype="PCM_16")
    add("dc", "audio/dc.wav", "the lungs are clear", "(DC)")
    noise = np.clip(np.random.default_rng(0).standard_normal(RATE * 2), -0.99, 0.99).astype(np.float32)
    sf.write(audio / "noise.wav", noise, RATE, subtype="PCM_16")
    add("noise", "audio/noise.wav", "the lungs are clear", "noise, not speech")
    sf.write(audio / "loud_float.wav", _tone(2.0, 8.0), RATE, subtype="FLOAT")
    add("float_beyond_full_scale", "audio/loud_float.wav", "the lungs are clear", "beyond full scale")
    sf.write(audio / "clipped.wav", np.clip(_tone(2.0, 3.0), -1, 1), RATE, subtype="PCM_16")
    add("clipped", "audio/clipped.wav", "the lungs are clear", "clipped")
    sf.write(audio / "silent.wav", np.zeros(RATE * 2, np.float32), RATE, subtype="PCM_16")
    add("silent", "audio/silent.wav", "the lungs are clear", "silent audio")
    sf.write(audio / "short.wav", _tone(0.1), RATE, subtype="PCM_16")
    add("too_short", "audio/short.wav", "yes", "too short")
    sf.write(audio / "long.wav", _tone(31.0), RATE, subtype="PCM_16")
    add("too_long", "audio/long.wav", "the lungs are clear " * 10, "too long")
    # table
    # a second row with the id of a good row (the first one is kept): checked by its reason
    rows.append({"utterance_id": "good0", "audio_path": "audio/good1.wav", "text": clips[1][0], "speaker": "zoo"})
    add("bad_offset", "audio/good0.wav", text0, None, offset="abc")
    expected[f"line {len(rows) + 1}"] = expected.pop("bad_offset") or "not a number"  # rows start on line 2
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["utterance_id", "audio_path", "text", "speaker", "offset"])
        writer.writeheader()
        writer.writerows(rows)
    with open(manifest, "ab") as handle:  # rows no CSV writer would write
        handle.write(b"extra_fields,audio/good0.wav,there is no pneumothorax,zoo,0,surplus\n")
        handle.write("latin1,audio/good0.wav,caf\u00e9 au lait,zoo,0\n".encode("latin-1"))
    expected[f"line {len(rows) + 2}"] = "more fields"
    expected[f"line {len(rows) + 3}"] = "not UTF-8"
    return expected


def write_tsv_zoo(folder: Path, clips: list[tuple[str, np.ndarray]]) -> tuple[Path, int]:
    """A TSV manifest where the second row's transcript starts with a quote; returns (path, data lines)."""
    folder.mkdir(parents=True)
    lines = ["audio_path\ttext\tspeaker"]
    for i, (text, clip) in enumerate(clips * 3):
        sf.write(folder / f"{i}.wav", clip, RATE, subtype="PCM_16")
        lines.append(f"{i}.wav\t{chr(34) + 'Quoted' + chr(34) + ' ' + text if i == 1 else text}\ts{i}")
    (folder / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "manifest.tsv", len(lines) - 1
