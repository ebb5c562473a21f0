"""A multilingual adapter's language travels from training through the adapter folder to the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from vernacular.catalog_datasets import AdapterDataset
from vernacular.data.audio import write_wav
from vernacular.data.features import extract_features
from vernacular.models.loading import SPEECH_TASK_FILE, load_processor, resolve_base_model, with_speech_task
from vernacular.pipelines.training.nodes import train_adapter
from vernacular.serving.cli import main
from vernacular.serving.ct2 import PRECISION_FILE

TRAINING = {"epochs": 1, "batch_size": 2, "device": "cpu", "progress": False, "validation_wer": False,
            "checkpoint_every_steps": 10, "seed": 3}
ADAPTER = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def tiny_multilingual(tmp_path_factory) -> dict:
    """A randomly initialised tiny Whisper with the embedded whisper-base's multilingual tokenizer,
    feature extractor and generation config."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    real = Path(resolve_base_model("embedded:whisper-base", tmp_path_factory.mktemp("base-models"))["local_dir"])
    reference = WhisperConfig.from_pretrained(real)
    config = WhisperConfig(
        vocab_size=reference.vocab_size, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=reference.decoder_start_token_id,
        pad_token_id=reference.pad_token_id, eos_token_id=reference.eos_token_id, bos_token_id=reference.bos_token_id)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(real)
    out = tmp_path_factory.mktemp("tiny-multilingual")
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(real).save_pretrained(out)
    return {"name_or_path": str(out), "source": "local directory", "local_dir": str(out)}


def records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_german_adapter_records_its_language_and_transcribes_in_it(tmp_path, tiny_multilingual, speech_clips,
                                                                     capsys):
    base = with_speech_task(tiny_multilingual, "de")
    rows = [{"utterance_id": f"u{i}", "audio_path": str(write_wav(tmp_path / f"{i}.wav", audio)), "text": text,
             "speaker": "v", "split": "train" if i < 3 else "validation"} for i, (text, audio) in enumerate(speech_clips)]
    processor = load_processor(base)
    de, transcribe = (processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|de|>", "<|transcribe|>"))
    assert processor.tokenizer("Hallo").input_ids[1:3] == [de, transcribe]
    index = extract_features(pd.DataFrame(rows), processor, tmp_path / "cache", progress=False)

    adapter, metrics = train_adapter(base, index, TRAINING, ADAPTER, {}, {}, {}, {"root": str(tmp_path / "data")}, "v")
    assert (metrics["language"], metrics["task"]) == ("de", "transcribe")
    dataset = AdapterDataset(str(tmp_path / "adapter"))
    dataset.save(adapter)
    folder = dataset.load()
    assert json.loads((Path(folder) / SPEECH_TASK_FILE).read_text())["language"] == "de"
    # its serving precision was measured on its one validation recording, decoded in German
    assert json.loads((Path(folder) / PRECISION_FILE).read_text()) == metrics["serving_precision"]
    assert metrics["serving_precision"]["n_utterances"] == 1

    clip = rows[0]["audio_path"]
    assert main(["--vertical", "accent", "--adapter", folder, "--device", "cpu", clip]) == 0
    (record,) = records(capsys)
    assert record["status"] == "ok" and record["language"] == "de"
    assert main(["--vertical", "accent", "--adapter", folder, "--device", "cpu", "--language", "auto", clip]) == 0
    assert records(capsys)[0]["language"] == "auto"
    assert main(["--vertical", "accent", "--adapter", folder, "--device", "cpu", "--language", "xx", clip]) == 2
    assert "xx" in capsys.readouterr().err


def test_an_english_only_adapter_refuses_another_language_before_any_file(tmp_path, tiny_whisper, speech_clips,
                                                                          capsys):
    from tests.serving.test_batch import save_adapter

    folder = save_adapter(tiny_whisper, tmp_path / "adapter", seed=0)
    clip = str(write_wav(tmp_path / "one.wav", speech_clips[0][1]))
    assert main(["--vertical", "accent", "--adapter", str(folder), "--device", "cpu", "--language", "de", clip]) == 2
    captured = capsys.readouterr()
    assert "English-only" in captured.err and captured.out == ""
