"""Smoke tests of the benchmark scripts' core functions on a tiny Whisper and a few clips (1-2 steps)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from transformers import WhisperProcessor

from vernacular.data.audio import write_wav
from benchmarks import pipeline as pipeline_bench
from benchmarks import training as training_bench
from vernacular.data.features import extract_features


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory, speech_clips) -> list[dict]:
    folder = tmp_path_factory.mktemp("bench-audio")
    return [{"utterance_id": f"u{i}", "audio_path": str(write_wav(folder / f"{i}.wav", audio)), "text": text,
             "speaker": f"v{i % 2}"} for i, (text, audio) in enumerate(speech_clips)]


@pytest.fixture(scope="module")
def features_index(tmp_path_factory, tiny_whisper, clip_rows):
    processor = WhisperProcessor.from_pretrained(tiny_whisper["local_dir"])
    rows = pd.DataFrame(clip_rows).assign(split="train")
    return extract_features(rows, processor, tmp_path_factory.mktemp("bench-features"), splits=("train",),
                            progress=False)


@pytest.mark.parametrize("backend", training_bench.BACKENDS)
def test_training_backends_report_throughput_and_memory(backend, tiny_whisper, features_index, tmp_path):
    config = training_bench.BenchConfig(device="cpu", batch_size=2, warmup_steps=1, steps=1, threads=2)
    result = training_bench.MEASURES[backend](tiny_whisper, features_index, config, tmp_path)
    assert result["backend"] == backend
    assert result["optimizer_steps"] == config.total_steps  # the step clock saw every step of this loop
    assert len(result["rss_after_each_step"]) == config.total_steps and min(result["rss_after_each_step"]) > 0
    assert result["measured_steps"] == 1 and result["samples_per_second"] > 0
    assert result["seconds_per_step"] == pytest.approx(config.batch_size / result["samples_per_second"])
    assert result["peak_memory_bytes"] >= result["baseline_memory_bytes"] > 0
    assert result["wall_seconds"] > result["seconds_to_first_step"] > 0 and result["seconds_after_last_step"] >= 0
    assert "cores" in result["hardware"] and result["precision"] == "fp32"
    assert list(tmp_path.iterdir()) == []  # temporary checkpoints / trainer output removed
    table = training_bench.format_table([result])
    assert backend in table and f"{result['samples_per_second']:.2f}" in table


def test_seq2seq_collator_matches_vernacular_teacher_forcing(tiny_whisper, features_index):
    from vernacular.data.features import load_split
    from vernacular.models.loading import load_model
    from vernacular.models.families import IGNORE_INDEX
    from vernacular.models.families.whisper import collate

    model, processor = load_model(tiny_whisper)[:2]
    split = load_split(features_index, "train")
    dataset = training_bench.PaddedFeatures(split, 3000)
    hf = training_bench.SpeechSeq2SeqCollator(processor, model.config.decoder_start_token_id)([dataset[0], dataset[1]])
    ours = collate([{"features": split["features"][i], "pad_value": split["pad_values"][i],
                     "labels": split["labels"][i]} for i in (0, 1)], processor.tokenizer.eos_token_id)
    assert hf["input_features"].shape == ours["input_features"].shape
    assert (hf["input_features"] == ours["input_features"]).all()
    # both recipes train on the same target tokens (the start token is never a target)
    assert hf["labels"].tolist() == ours["labels"].masked_fill(ours["labels"] == IGNORE_INDEX, -100).tolist()


def test_memory_size_run_reports_each_stage(tiny_whisper, clip_rows, tmp_path):
    rows = [{k: r[k] for k in ("utterance_id", "audio_path", "text", "speaker")} for r in clip_rows]
    manifest = pipeline_bench.tile_manifest(rows, 3, tmp_path / "x3" / "manifest.csv")
    tiled = pd.read_csv(manifest)
    assert len(tiled) == 12 and tiled["utterance_id"].is_unique
    root = Path(clip_rows[0]["audio_path"]).parent
    result = pipeline_bench.memory_size_run(str(manifest), str(root), str(tmp_path / "storage"),
                                            "radiology", train_steps=1, base_model=tiny_whisper["local_dir"],
                                            base_cache=str(tmp_path / "base"), batch_size=2)
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == ["ingestion", "features", "training"]
    assert stages["ingestion"]["rows"] == 12 and stages["ingestion"]["audio_hours"] > 0
    assert sum(stages["features"]["feature_rows"].values()) <= 12 and stages["features"]["cache_bytes"] > 0
    assert stages["training"]["steps"] == 1
    peaks = [stages[s]["peak_rss_bytes"] for s in ("ingestion", "features", "training")]
    assert 0 < peaks[0] <= peaks[1] <= peaks[2] == result["peak_rss_bytes"]  # a high-water mark
    assert all(s["seconds"] > 0 for s in result["stages"])
    table = pipeline_bench.format_memory({"sizes": [{"times": 3, **result}]})
    assert "| 3x | 12 |" in table


def test_rerun_of_ingestion_keeps_the_synthetic_audio(tmp_path):
    project = pipeline_bench.scratch_project(tmp_path / "project")
    params = {"radiology": {"source": {"max_sentences": 4}}}
    first = pipeline_bench.run_pipeline_timed(project, "radiology.ingestion", params)
    before = pipeline_bench.snapshot(project, "radiology")
    second = pipeline_bench.run_pipeline_timed(project, "radiology.ingestion", params)
    files = pipeline_bench.rewritten(before, pipeline_bench.snapshot(project, "radiology"))
    for run in (first, second):
        assert set(run["nodes"]) == {"radiology.load_source", "radiology.validate_corpus", "radiology.split_corpus"}
        assert all(n["seconds"] > 0 and n["peak_rss_bytes"] > 0 for n in run["nodes"].values())
        assert run["wall_seconds"] >= sum(n["seconds"] for n in run["nodes"].values())
    synthetic = files["synthetic audio"]
    assert synthetic["files_before"] >= 4 and synthetic["unchanged"] == synthetic["files_before"]
    assert synthetic["rewritten"] == synthetic["new"] == 0
    assert files["16 kHz audio copies"]["rewritten"] == 0
    stages = pipeline_bench.stage_of_nodes("radiology")
    assert stages["radiology.load_source"] == "ingestion" and stages["radiology.train_adapter"] == "training"
