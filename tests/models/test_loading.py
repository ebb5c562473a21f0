"""Base-model resolution: embedded default, local directory, hub id under HF_HUB_OFFLINE."""

from __future__ import annotations

import pytest
import torch

from vernacular.models.loading import load_model, pick_device, resolve_base_model


def test_local_directory_is_used_as_is(tiny_whisper, tmp_path):
    resolved = resolve_base_model(tiny_whisper["local_dir"], tmp_path)
    assert resolved["source"] == "local directory" and resolved["local_dir"] == tiny_whisper["local_dir"]
    model, processor = load_model(resolved)[:2]
    assert model.config.d_model == 64 and processor.feature_extractor.feature_size == 80


def test_directory_without_a_checkpoint_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a transformers checkpoint"):
        resolve_base_model(str(tmp_path), tmp_path / "cache")


def test_unknown_embedded_model_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="embedded:whisper-tiny.en"):
        resolve_base_model("embedded:whisper-large", tmp_path)


def test_hub_id_offline_and_not_cached_fails_fast_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub-cache"))
    resolved = resolve_base_model("openai/whisper-small", tmp_path)
    assert resolved["local_dir"] is None and "HF_HUB_OFFLINE=True" in resolved["source"]
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set"):
        load_model(resolved)[:2]


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"


def test_a_missing_local_base_model_folder_is_named_as_missing_not_as_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import pytest

    with pytest.raises(FileNotFoundError, match="no such folder") as info:
        resolve_base_model(str(tmp_path / "my-model"), tmp_path / "cache")
    assert "HF_HUB_OFFLINE" not in str(info.value)
