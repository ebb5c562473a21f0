"""A published adapter folder: names its base as the Hub does, loads anywhere with plain PEFT, carries
its card; `vernacular push --dry-run` writes exactly what would be uploaded; export copies the card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vernacular.catalog_datasets import AdapterDataset
from vernacular.data.audio import write_wav
from vernacular.data.features import extract_features
from vernacular.models.loading import load_adapter, load_processor
from vernacular.pipelines.training.nodes import train_adapter
from vernacular.reporting.adapter_card import write_card_into_adapter
from vernacular.serving.cli import push_main

VERSION = "2026-03-04T05.06.07.089Z"
CARD = "---\nlibrary_name: peft\nbase_model: openai/whisper-tiny.en\nvernacular:\n  vertical: radiology\n---\n# card\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory, embedded_base, speech_clips) -> Path:
    """A project folder whose radiology adapter was trained (2 steps) on the embedded tiny.en."""
    root = tmp_path_factory.mktemp("project")
    rows = [{"utterance_id": f"u{i}", "audio_path": str(write_wav(root / f"{i}.wav", audio)), "text": text,
             "speaker": "v", "split": "train" if i < 3 else "validation"} for i, (text, audio) in enumerate(speech_clips)]
    index = extract_features(pd.DataFrame(rows), load_processor(embedded_base), root / "cache", progress=False)
    training = {"epochs": 1, "batch_size": 2, "device": "cpu", "progress": False, "validation_wer": False,
                "checkpoint_every_steps": 10, "learning_rate": 0.01}
    adapter, _ = train_adapter(embedded_base, index, training, {"r": 4, "alpha": 8}, {}, {}, {},
                               {"root": str(root / "data")}, "radiology")
    AdapterDataset(str(root / "data/06_models/radiology/adapter"),
                   version=__import__("kedro.io.core", fromlist=["Version"]).Version(None, VERSION)).save(adapter)
    return root


def adapter_dir(project: Path) -> Path:
    return project / "data/06_models/radiology/adapter" / VERSION / "adapter"


def test_adapter_config_names_the_hub_id_and_a_copied_folder_loads_with_plain_peft(project, embedded_base, tmp_path):
    folder = adapter_dir(project)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "openai/whisper-tiny.en"
    moved = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(folder, moved)

    # the base "available" as the Hub would provide it: a local hub cache holding openai/whisper-tiny.en
    commit = "0" * 40
    snapshot = tmp_path / "hub" / "models--openai--whisper-tiny.en" / "snapshots" / commit
    shutil.copytree(embedded_base["local_dir"], snapshot)
    (tmp_path / "hub" / "models--openai--whisper-tiny.en" / "refs").mkdir()
    (tmp_path / "hub" / "models--openai--whisper-tiny.en" / "refs" / "main").write_text(commit)
    script = ("import sys, torch\n"
              "from peft import PeftConfig, PeftModel\n"
              "from transformers import WhisperForConditionalGeneration\n"
              "base = PeftConfig.from_pretrained(sys.argv[1]).base_model_name_or_path\n"
              "model = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(base), sys.argv[1])\n"
              "model.eval()\n"
              "torch.manual_seed(0)\n"
              "features = torch.randn(1, 80, 3000)\n"
              "with torch.no_grad():\n"
              "    logits = model(input_features=features, decoder_input_ids=torch.tensor([[50257, 50362]])).logits\n"
              "print(repr(logits.double().sum().item()))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(moved)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model, _ = load_adapter(embedded_base, folder, merge=False)
    torch.manual_seed(0)
    features = torch.randn(1, 80, 3000)
    with torch.no_grad():
        expected = model(input_features=features, decoder_input_ids=torch.tensor([[50257, 50362]])).logits
    assert float(done.stdout.strip()) == pytest.approx(expected.double().sum().item(), rel=1e-5)


def test_push_dry_run_writes_exactly_the_folder_to_upload(project, capsys, monkeypatch, tmp_path):
    folder = adapter_dir(project)
    monkeypatch.chdir(tmp_path)  # no conf/ here: the adapter is given
    assert push_main(["--vertical", "radiology", "--repo-id", "acme/radiology", "--adapter", str(folder),
                      "--dry-run"]) == 2
    assert "reporting stage" in capsys.readouterr().err  # PEFT's template README is not a card

    write_card_into_adapter(folder, CARD)
    assert push_main(["--vertical", "radiology", "--repo-id", "acme/radiology", "--adapter", str(folder),
                      "--dry-run"]) == 0
    record = json.loads(capsys.readouterr().out)
    staged = tmp_path / "push-acme--radiology"
    assert record["dry_run"] and record["private"] and Path(record["folder"]) == staged.resolve()
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in folder.iterdir()) == record["files"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "speech_task.json"} <= set(record["files"])
    for name in record["files"]:
        assert (staged / name).read_bytes() == (folder / name).read_bytes()
    assert (staged / "README.md").read_text() == CARD

    assert push_main(["--vertical", "radiology", "--repo-id", "acme/radiology", "--adapter", str(folder),
                      "--dry-run"]) == 2  # never over an earlier dry run
    assert "already exists" in capsys.readouterr().err
    assert push_main(["--vertical", "radiology", "--repo-id", "radiology", "--adapter", str(folder),
                      "--dry-run", "--public"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


def test_push_without_network_fails_clearly_after_staging(project, capsys, monkeypatch, tmp_path):
    folder = adapter_dir(project)
    write_card_into_adapter(folder, CARD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert push_main(["--vertical", "radiology", "--repo-id", "acme/radiology", "--adapter", str(folder)]) == 1
    assert "upload to acme/radiology failed" in capsys.readouterr().err


def test_export_copies_the_card_and_a_moved_adapter_still_transcribes(project, embedded_base, speech_clips,
                                                                       tmp_path, capsys, monkeypatch):
    from vernacular.models.export import export_adapter
    from vernacular.serving.cli import main

    folder = adapter_dir(project)
    write_card_into_adapter(folder, CARD)
    record = export_adapter(embedded_base, folder, tmp_path / "export")
    assert (tmp_path / "export" / "README.md").read_text() == CARD and record["paths"]["card"].endswith("README.md")

    moved = tmp_path / "moved" / "adapter"
    shutil.copytree(folder, moved)
    clip = str(write_wav(tmp_path / "one.wav", speech_clips[0][1]))
    monkeypatch.chdir(tmp_path)  # no project here: the base comes from speech_task.json (embedded:whisper-tiny.en)
    assert main(["--vertical", "radiology", "--adapter", str(moved), "--device", "cpu", clip]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["status"] == "ok"
    assert (tmp_path / "data/06_models/base/whisper-tiny.en/config.json").is_file()
