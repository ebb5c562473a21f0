"""Adapter export: merged checkpoint = unmerged adapter, CTranslate2 export = transformers, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from vernacular.common.fileio import sha256_file
from vernacular.serving.cli import export_main
from vernacular.models.export import ExportError, export_adapter, export_ct2
from vernacular.models.loading import load_model

ctranslate2 = pytest.importorskip("ctranslate2")

SOT, EOT, NO_TIMESTAMPS = 50257, 50256, 50362
MAX_NEW = 40


def save_random_adapter(base_model: dict, out: Path, scale: float, seed: int = 0) -> Path:
    """A LoRA (r=8 on q,v) whose B matrices are random instead of zero, so it changes the output."""
    model, _ = load_model(base_model)[:2]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    peft_model.save_pretrained(out)
    return out


def greedy_hf(model, features: np.ndarray) -> list[list[int]]:
    with torch.no_grad():
        sequences = model.generate(torch.from_numpy(features), num_beams=1, do_sample=False, max_new_tokens=MAX_NEW)
    return [[t for t in seq if t < EOT] for seq in sequences.tolist()]


def greedy_ct2(ct2_dir: Path, features: np.ndarray, compute_type: str = "float32") -> list[list[int]]:
    whisper = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type)
    results = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                               [[SOT, NO_TIMESTAMPS]] * len(features), beam_size=1, max_length=MAX_NEW + 2)
    return [[t for t in r.sequences_ids[0] if t < EOT] for r in results]


@pytest.fixture(scope="module")
def embedded_export(embedded_base, tmp_path_factory):
    """The real tiny.en with a perturbed adapter, exported (transformers + CT2 float32)."""
    root = tmp_path_factory.mktemp("export")
    adapter = save_random_adapter(embedded_base, root / "adapter", scale=0.01)
    record = export_adapter(embedded_base, adapter, root / "out", ct2=True, quantization="float32")
    return embedded_base, adapter, root / "out", record


@pytest.fixture(scope="module")
def merged_from_disk(embedded_export):
    """(model, processor) loaded from the exported transformers folder."""
    folder = str(embedded_export[2] / "transformers")
    return load_model({"name_or_path": folder, "local_dir": folder})[:2]


def test_export_layout_and_record(embedded_export):
    base, adapter, out, record = embedded_export
    assert sorted(p.name for p in out.iterdir()) == ["ct2", "export.json", "transformers"]
    assert json.loads((out / "export.json").read_text()) == record
    assert record["adapter_sha256"] == sha256_file(adapter / "adapter_model.safetensors")
    assert record["ct2_quantization"] == "float32" and record["paths"]["ct2"] == str(out / "ct2")
    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json", "vocabulary.json"):
        assert (out / "ct2" / name).is_file(), name
    assert json.loads((out / "ct2" / "preprocessor_config.json").read_text())["feature_size"] == 80
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_saved_merged_model_equals_unmerged_adapter(embedded_export, merged_from_disk, speech_clips):
    """The checkpoint on disk (what is served) gives the logits of base + unmerged adapter."""
    base, adapter, out, _ = embedded_export
    merged, processor = merged_from_disk
    unmerged = PeftModel.from_pretrained(load_model(base)[:2][0], str(adapter)).eval()
    audios = [a for _, a in speech_clips[:2]]
    features = processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt").input_features
    decoder_ids = torch.tensor([[SOT, NO_TIMESTAMPS, 383, 262]] * 2)
    with torch.no_grad():
        logits = {name: model(input_features=features, decoder_input_ids=decoder_ids).logits
                  for name, model in (("merged", merged), ("unmerged", unmerged))}
        with unmerged.disable_adapter():
            logits["base"] = unmerged(input_features=features, decoder_input_ids=decoder_ids).logits
    assert not any(n.startswith("base_model") or "lora" in n for n, _ in merged.named_parameters())
    assert (logits["base"] - logits["unmerged"]).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(logits["merged"], logits["unmerged"], atol=2e-4, rtol=1e-4)


def test_ct2_export_decodes_like_transformers(embedded_export, merged_from_disk, speech_clips):
    """Same log-mel features, greedy: CTranslate2 (fp32 export) and transformers pick the same tokens."""
    out = embedded_export[2]
    merged, processor = merged_from_disk
    audios = [a for _, a in speech_clips[:3]]
    features = processor.feature_extractor(audios, sampling_rate=16000,
                                           return_tensors="np").input_features.astype(np.float32)
    ours, theirs = greedy_hf(merged, features), greedy_ct2(out / "ct2", features)
    for (text, _), mine, ct2_ids in zip(speech_clips[:3], ours, theirs):
        assert mine, text
        assert mine == ct2_ids, f"{text}: {processor.tokenizer.decode(mine)!r} vs {processor.tokenizer.decode(ct2_ids)!r}"


def test_faster_whisper_serves_the_export(embedded_export, merged_from_disk, speech_clips):
    """faster-whisper loads the folder offline (tokenizer, mel bins from the copied files) and, fed
    its own features (log-mel padded with 0), transcribes like transformers on those features."""
    faster_whisper = pytest.importorskip("faster_whisper")
    out = embedded_export[2]
    merged, processor = merged_from_disk
    fw = faster_whisper.WhisperModel(str(out / "ct2"), device="cpu", compute_type="float32")
    assert not fw.model.is_multilingual and fw.model.n_mels == 80
    for text, audio in speech_clips[:2]:
        mel = fw.feature_extractor(audio)
        frames = mel.shape[-1] - 1
        features = np.zeros((1, mel.shape[0], 3000), dtype=np.float32)
        features[0, :, :frames] = mel[:, :frames]
        mine = greedy_hf(merged, features)[0]
        segments, info = fw.transcribe(audio, beam_size=1, temperature=0, without_timestamps=True,
                                       condition_on_previous_text=False, vad_filter=False,
                                       no_speech_threshold=None, max_new_tokens=MAX_NEW)
        segments = list(segments)
        assert info.language == "en"
        assert [t for s in segments for t in s.tokens if t < EOT] == mine, text
        assert "".join(s.text for s in segments).strip() == processor.tokenizer.decode(mine).strip()


def test_export_never_overwrites_and_leaves_nothing_on_failure(tiny_whisper, tmp_path):
    adapter = save_random_adapter(tiny_whisper, tmp_path / "adapter", scale=0.05)
    existing = tmp_path / "exports" / "taken"
    existing.mkdir(parents=True)
    (existing / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="never overwrite"):
        export_adapter(tiny_whisper, adapter, existing)
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception):
        export_adapter(tiny_whisper, broken, tmp_path / "exports" / "new", ct2=True)
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["taken"]  # no half-written folder

    with pytest.raises(ExportError, match="adapter_config.json"):
        export_adapter(tiny_whisper, tmp_path, tmp_path / "exports" / "other")
    with pytest.raises(ExportError, match="quantization"):
        export_adapter(tiny_whisper, adapter, tmp_path / "exports" / "other", ct2=True, quantization="int4")
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_ct2(adapter, tmp_path / "exports" / "other")
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["taken"]


def test_cli_exports_int8_ct2(tiny_whisper, tmp_path, capsys):
    adapter = save_random_adapter(tiny_whisper, tmp_path / "adapter", scale=0.05)
    out = tmp_path / "served"
    # the adapter records the tiny model's folder, so --base is not needed
    assert export_main(["--adapter", str(adapter), "--out", str(out), "--ct2", "--quantization", "int8"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ct2_quantization"] == "int8" and record["paths"]["ct2"] == str(out / "ct2")
    from vernacular.models.whisper_ct2 import read_ct2_model

    _, _, variables, _ = read_ct2_model(out / "ct2" / "model.bin")
    assert variables["encoder/layer_0/ffn/linear_0/weight"].dtype == np.int8
    features = np.random.default_rng(0).normal(size=(1, 80, 3000)).astype(np.float32)
    assert greedy_ct2(out / "ct2", features, compute_type="int8")  # loads and decodes

    assert export_main(["--adapter", str(adapter), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert export_main(["--adapter", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert export_main(["--adapter", str(adapter), "--out", str(tmp_path / "y")]) == 2
    assert "pass --base" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_vernacular_export_subcommand_is_wired():
    result = subprocess.run([sys.executable, "-m", "vernacular", "export", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "vernacular export" in result.stdout and "--quantization" in result.stdout


def test_inference_benchmark_runs_every_system(tiny_whisper, speech_clips, tmp_path, capsys):
    """The benchmark script end to end on a tiny model: (a)-(f) at batch 1 and 2, all reported."""
    pytest.importorskip("faster_whisper")
    from vernacular.data.audio import write_wav
    from benchmarks import inference

    adapter = save_random_adapter(tiny_whisper, tmp_path / "adapter", scale=0.05)
    data = tmp_path / "clips"
    data.mkdir()
    for copy in range(2):
        for index, (_, audio) in enumerate(speech_clips):
            write_wav(data / f"{copy}-{index}.wav", audio)
    out = tmp_path / "inference.json"
    argv = ["--data", str(data), "--segments", "2", "--segment-seconds", "2", "--batch-sizes", "1,2",
            "--device", "cpu", "--base", tiny_whisper["local_dir"], "--adapter", str(adapter),
            "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    assert inference.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["system"], r["batch_size"]) for r in rows] == [(s, b) for b in (1, 2) for s in "abcdef"]
    for row in rows:
        assert "error" not in row, row
        assert len(row["texts"]) == 2 and row["seconds_per_30s"] > 0
        assert row["real_time_factor"] == pytest.approx(row["seconds_per_30s"] / 30)
        assert f"| ({row['system']}) {row['name']} | {row['batch_size']} |" in printed
    assert {row["vs_b"] for row in rows if row["system"] == "b"} == {1.0}
    assert result["header"]["segments"] == 2 and result["header"]["mean_segment_seconds"] <= 2
    assert inference.main(argv) == 2  # never overwrites its results file
