"""The CTranslate2 serving backend for Whisper-family adapters: the merged adapter exported once per
adapter version (cached, keyed by the adapter's weights hash), served with faster-whisper.

faster-whisper brings what the transformers path lacks: int8 inference on CPU, Silero VAD (packaged
with faster-whisper, no download) to cut long recordings at speech boundaries, segment (and word)
timestamps, and its guards against loops and hallucination (temperature fallback, compression
ratio, log-probability and no-speech thresholds), all set from `transcription.ct2` in conf/.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vernacular.common.config import build_settings
from vernacular.common.fileio import new_digest, sha256_file, sha256_text, write_new_directory
from vernacular.data.audio import TARGET_SAMPLE_RATE  # faster-whisper's rate too
from vernacular.models.export import CT2_SUBDIR, export_adapter
from vernacular.models.loading import check_adapter_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_RECORD = "ct2_cache.json"
QUANTIZATION_AUTO = {"cpu": "int8", "cuda": "int8_float16"}
# What `auto` serves when the adapter's precision check found the quantized model too lossy.
QUANTIZATION_PRECISE = {"cpu": "float32", "cuda": "float16"}
# Written beside the adapter at training: which weight type `quantization: auto` serves it with,
# and the validation WERs that decided it (vernacular.serving.precision).
PRECISION_FILE = "serving_precision.json"


@dataclass
class CT2Settings:
    """`transcription.ct2`: how faster-whisper serves the exported model."""

    # auto: int8 on CPU (int8_float16 on CUDA), unless the adapter's precision check (made on its
    # validation split at training, PRECISION_FILE) found that this costs more than
    # max_quantization_loss_pts WER points over float32 (float16): then that. Or name one.
    quantization: str = "auto"
    max_quantization_loss_pts: float = 0.5
    precision_check: bool = True        # run that check at the end of training (Whisper-family adapters)
    cpu_threads: int = 0                # 0: CTranslate2's default (all cores)
    beam_size: int = 1
    batch_size: int = 8                 # speech segments decoded together (BatchedInferencePipeline)
    vad_filter: bool = True             # Silero VAD: each stretch of speech is one segment, silence is skipped
    min_silence_ms: int = 500           # VAD: a pause at least this long ends a speech segment
    speech_pad_ms: int = 200            # VAD: audio kept on each side of the detected speech
    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # fallback
    compression_ratio_threshold: float = 2.4   # above it the segment is a loop: decode again, hotter
    log_prob_threshold: float = -1.0            # below it: decode again, hotter
    no_speech_threshold: float = 0.6            # with a low log-prob above this: the segment is silence
    condition_on_previous_text: bool = False    # True propagates a loop from one segment to the next
    word_timestamps: bool = False               # words with times in each segment (slower)
    # Consecutive stretches of speech are decoded together in windows of up to this many seconds
    # (each window is padded to Whisper's 30 s, so one short stretch per window wastes most of
    # the compute); a segment's times are then its window's. 0: one segment per stretch, the
    # times of the speech itself (what subtitles use: `transcription.subtitles` implies 0).
    window_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.batch_size < 1 or self.cpu_threads < 0 or self.min_silence_ms < 0 \
                or self.speech_pad_ms < 0:
            raise ValueError("transcription.ct2.beam_size and batch_size must be >= 1; cpu_threads, min_silence_ms "
                             "and speech_pad_ms >= 0")
        if not 0 <= self.window_seconds <= 30:
            raise ValueError(f"transcription.ct2.window_seconds must be in [0, 30], got {self.window_seconds}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError("transcription.ct2.temperatures must be a non-empty list of values >= 0")
        if self.max_quantization_loss_pts < 0:
            raise ValueError("transcription.ct2.max_quantization_loss_pts must be >= 0 (WER points)")

    @classmethod
    def from_dict(cls, values: dict | None) -> "CT2Settings":
        return build_settings(cls, values, "transcription.ct2")

    def compute_type(self, device: str, recorded: dict | None = None) -> str:
        """The compute type to serve with on `device` ("cpu", "cuda"). With `auto`, `recorded` (the
        adapter's PRECISION_FILE, see `read_precision_choice`) decides when it was measured on the
        same kind of device."""
        if self.quantization != "auto":
            return self.quantization
        kind = "cuda" if device == "cuda" else "cpu"
        if recorded and recorded.get("device") == kind:
            return str(recorded["chosen"])
        return QUANTIZATION_AUTO[kind]


def read_precision_choice(adapter_dir: str | os.PathLike | None) -> dict | None:
    """The adapter's PRECISION_FILE record ({"device", "chosen", "wer", ...}), or None without one
    (an adapter trained before the check existed, or with `precision_check: false`)."""
    if adapter_dir is None:
        return None
    path = Path(adapter_dir) / PRECISION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["device"] not in QUANTIZATION_AUTO or not isinstance(record["chosen"], str):
            raise ValueError(f"device {record['device']!r}, chosen {record['chosen']!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a serving-precision record ({exc}); delete it (the adapter is then served "
                         "with the default precision) or retrain to measure it again") from exc
    return record


def precision_reason(recorded: dict | None, device: str, compute_type: str) -> str:
    """Why `quantization: auto` serves `compute_type`, in words for the log and the reports."""
    kind = "cuda" if device == "cuda" else "cpu"
    if not recorded:
        return f"the {kind} default (no precision check recorded with this adapter)"
    if recorded.get("device") != kind:
        return f"the {kind} default (the adapter's precision check was made on {recorded.get('device')})"
    wer = recorded.get("wer", {})
    cheap, precise = QUANTIZATION_AUTO[kind], QUANTIZATION_PRECISE[kind]
    if cheap in wer and precise in wer:
        loss = 100 * (wer[cheap] - wer[precise])
        verdict = "within" if compute_type == cheap else "over"
        return (f"the adapter's precision check: {cheap} {100 * wer[cheap]:.1f}% vs {precise} {100 * wer[precise]:.1f}% "
                f"WER on {recorded.get('n_utterances')} validation utterances ({loss:+.1f} pts, {verdict} the "
                f"{recorded.get('max_loss_pts')}-point allowance)")
    return "the adapter's precision check"


def export_quantization(compute_type: str) -> str:
    """The weight type to store: int8 weights serve int8 and int8_float16 alike."""
    return "int8" if compute_type.startswith("int8") else compute_type


def _config_key(path: Path) -> str:
    """The adapter config's content, independent of the order PEFT wrote its module lists in (they
    are sets: the order changes from one process to the next, the adapter does not)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for name in ("target_modules", "modules_to_save", "layers_to_transform"):
        if isinstance(config.get(name), list):
            config[name] = sorted(config[name], key=str)
    return sha256_text(json.dumps(config, sort_keys=True))


def ct2_model_dir(base_model: dict, adapter_dir: str | os.PathLike | None, cache_root: str | os.PathLike,
                  quantization: str) -> Path:
    """The CTranslate2 copy of the base model with `adapter_dir` merged in, exported once into
    `cache_root/<key>/` and reused: the key hashes the adapter's weights and config, the base model
    and the weight type, so a new adapter version gets its own export and an unchanged one never
    exports twice."""
    digest = new_digest(f"ct2-v{CACHE_FORMAT}|{base_model['name_or_path']}|{base_model.get('local_dir')}|"
                        f"{quantization}")
    if adapter_dir is not None:
        folder = check_adapter_dir(adapter_dir)
        digest.update(f"|adapter_config.json={_config_key(folder / 'adapter_config.json')}".encode())
        if (folder / "adapter_model.safetensors").is_file():
            digest.update(f"|adapter_model.safetensors={sha256_file(folder / 'adapter_model.safetensors')}".encode())
    target = Path(cache_root) / digest.hexdigest()[:20]
    if (target / "model.bin").is_file():
        return target
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    log.info("exporting %s%s to CTranslate2 (%s) once, into %s", base_model["name_or_path"],
             f" + adapter {adapter_dir}" if adapter_dir else "", quantization, target)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=cache_root, prefix=".export-") as work:
            record = export_adapter(base_model, adapter_dir, Path(work) / "out", ct2=True, quantization=quantization)
            for item in (Path(work) / "out" / CT2_SUBDIR).iterdir():
                item.rename(tmp / item.name)
        (tmp / CACHE_RECORD).write_text(json.dumps({"format": CACHE_FORMAT, "quantization": quantization,
                                                    "adapter": str(adapter_dir) if adapter_dir else None,
                                                    "export": record}, indent=2, default=str) + "\n")

    try:
        write_new_directory(target, write)
    except FileExistsError:  # another process exported the same key first: theirs is identical
        pass
    return target


class FasterWhisperModel:
    """faster-whisper on an exported model: one call transcribes one recording (any length)."""

    def __init__(self, model_dir: str | os.PathLike, device: str, settings: CT2Settings, language: str | None,
                 task: str = "transcribe"):
        try:
            from faster_whisper import BatchedInferencePipeline, WhisperModel
        except ImportError as exc:  # a main dependency; this names the fix if an environment lost it
            raise ImportError("the CTranslate2 backend needs faster-whisper: pip install 'faster-whisper==1.2.1', "
                              "or set transcription.backend: transformers") from exc
        self.settings, self.language, self.task = settings, language, task
        self.compute_type = settings.compute_type(device)
        self.model = WhisperModel(str(model_dir), device="cuda" if device == "cuda" else "cpu",
                                  compute_type=self.compute_type, cpu_threads=settings.cpu_threads)
        self.pipeline = BatchedInferencePipeline(self.model)

    def speech_clips(self, audio: np.ndarray) -> list[dict] | None:
        """The stretches of speech ({"start", "end"} in seconds, each at most 30 s) that become the
        segments; None without VAD (then fixed 30-s windows)."""
        if not self.settings.vad_filter:
            return None
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        options = VadOptions(min_silence_duration_ms=self.settings.min_silence_ms,
                             speech_pad_ms=self.settings.speech_pad_ms, max_speech_duration_s=30)
        return [{"start": c["start"] / TARGET_SAMPLE_RATE, "end": c["end"] / TARGET_SAMPLE_RATE}
                for c in get_speech_timestamps(audio, options)]

    def transcribe(self, audio: np.ndarray) -> dict:
        """{"text", "segments": [{"start", "end", "text", "avg_logprob", "no_speech_prob", "words"?}],
        "language", "language_probability"} for one 16 kHz mono recording.

        With `window_seconds` > 0 faster-whisper's own VAD mode runs: the stretches of speech are cut
        out of the silence and joined into windows of up to that length, one segment per window (its
        times mapped back to the recording). With 0, each stretch is decoded as one segment, so a
        segment's times are where its speech is (what subtitles need), at one 30-s encoder pass per
        stretch."""
        s = self.settings
        if s.vad_filter and s.window_seconds > 0:  # one VAD pass, faster-whisper's
            where = {"vad_filter": True, "vad_parameters": {"min_silence_duration_ms": s.min_silence_ms,
                                                            "speech_pad_ms": s.speech_pad_ms,
                                                            "max_speech_duration_s": s.window_seconds}}
        else:
            clips = self.speech_clips(audio)
            if clips == []:  # no speech at all
                return {"text": "", "segments": [], "language": self.language, "language_probability": None}
            where = {"vad_filter": False, "clip_timestamps": clips}
        segments, info = self.pipeline.transcribe(
            audio, language=self.language, task=self.task, beam_size=s.beam_size,
            temperature=list(s.temperatures), compression_ratio_threshold=s.compression_ratio_threshold,
            log_prob_threshold=s.log_prob_threshold, no_speech_threshold=s.no_speech_threshold,
            condition_on_previous_text=s.condition_on_previous_text, word_timestamps=s.word_timestamps,
            batch_size=s.batch_size, **where)
        out = []
        for seg in segments:
            entry = {"start": round(float(seg.start), 3), "end": round(float(seg.end), 3), "text": seg.text.strip(),
                     "avg_logprob": float(seg.avg_logprob), "no_speech_prob": float(seg.no_speech_prob)}
            if s.word_timestamps:
                entry["words"] = [{"start": round(float(w.start), 3), "end": round(float(w.end), 3),
                                   "word": w.word.strip(), "probability": float(w.probability)}
                                  for w in (seg.words or [])]
            out.append(entry)
        return {"text": " ".join(e["text"] for e in out if e["text"]), "segments": out,
                "language": info.language, "language_probability": float(info.language_probability or 0.0)}

    def describe(self) -> dict:
        return {"backend": "ctranslate2", "compute_type": self.compute_type, **asdict(self.settings)}
