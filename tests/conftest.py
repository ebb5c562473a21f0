"""Shared fixtures: offline environment, the converted embedded model, a tiny Whisper, synthetic clips."""

from __future__ import annotations

import os

# Tests never touch the network: an unreachable hub otherwise retries for ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def embedded_base(tmp_path_factory) -> dict:
    """The embedded Whisper tiny.en, converted once per session."""
    from vernacular.models.loading import EMBEDDED_WHISPER, resolve_base_model

    return resolve_base_model(EMBEDDED_WHISPER, tmp_path_factory.mktemp("base-models"))


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory, embedded_base) -> dict:
    """A randomly initialised tiny Whisper (2+2 layers, d_model 64) with the real tokenizer and
    feature extractor, saved as a local checkpoint: fast enough for training tests."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    real = Path(embedded_base["local_dir"])
    processor = WhisperProcessor.from_pretrained(real)
    reference = WhisperConfig.from_pretrained(real)
    config = WhisperConfig(
        vocab_size=reference.vocab_size, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=reference.decoder_start_token_id,
        pad_token_id=reference.pad_token_id, eos_token_id=reference.eos_token_id, bos_token_id=reference.bos_token_id,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = WhisperForConditionalGeneration.from_pretrained(real).generation_config
    out = tmp_path_factory.mktemp("tiny-whisper")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"name_or_path": str(out), "source": "local directory", "local_dir": str(out)}


@pytest.fixture(scope="session")
def speech_clips() -> list[tuple[str, np.ndarray]]:
    """A few short synthetic sentences (text, 16 kHz audio)."""
    from vernacular.data.synth import synthesize

    texts = ["There is no pneumothorax.", "Mild cardiomegaly is present.",
             "The lungs are clear.", "Small left pleural effusion."]
    voices = ["en-us+m3", "en-gb-x-rp+f2", "en-029+m1", "en-us+m3"]
    return [(t, synthesize(t, v)) for t, v in zip(texts, voices)]


@pytest.fixture(scope="session")
def features_index(tmp_path_factory, tiny_whisper, speech_clips) -> dict:
    """Cached features of the speech clips for the tiny Whisper: 3 train utterances, 1 validation."""
    import pandas as pd
    from transformers import WhisperProcessor

    from vernacular.data.audio import write_wav
    from vernacular.data.features import extract_features

    folder = tmp_path_factory.mktemp("train-data")
    rows = [{"utterance_id": f"u{i}", "audio_path": str(write_wav(folder / f"{i}.wav", audio)), "text": text,
             "speaker": "v", "split": "train" if i < 3 else "validation"} for i, (text, audio) in enumerate(speech_clips)]
    return extract_features(pd.DataFrame(rows), WhisperProcessor.from_pretrained(tiny_whisper["local_dir"]),
                            folder / "cache", progress=False)
