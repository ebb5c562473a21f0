"""Batch transcription: incremental inbox runs, kill and resume, bad files, long-form chunks, CLI, Kedro."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vernacular.data.audio import write_wav
from tests.paths import REPO, scratch_project
from vernacular.serving.batch import (RESULTS_FILE, BatchSettings, RunInterrupted, chunk_bounds, join_texts,
                                      load_transcriber, read_results, run_inbox)

VERSION_OLD = "2026-01-01T00.00.00.000Z"
VERSION_NEW = "2026-02-01T00.00.00.000Z"


def save_adapter(base: dict, target: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(base["local_dir"])
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter a real effect
            param.data.normal_(0, 0.05)
    peft_model.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_whisper) -> Path:
    """data/06_models as Kedro leaves it: two versions of a radiology adapter and base_model.json."""
    root = tmp_path_factory.mktemp("models")
    for seed, version in enumerate((VERSION_OLD, VERSION_NEW)):
        save_adapter(tiny_whisper, root / "radiology" / "adapter" / version / "adapter", seed)
    (root / "radiology" / "base_model.json").write_text(json.dumps(tiny_whisper))
    return root


def fill_inbox(folder: Path, clips, names: list[str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_wav(folder / name, clips[i % len(clips)][1])
    return {p.name: str(p) for p in sorted(folder.iterdir())}


def settings(**overrides) -> BatchSettings:
    return BatchSettings(**{"device": "cpu", "batch_size": 2, "decoding": {"min_new_tokens_cap": 4,
                                                                           "max_tokens_per_second": 1.0},
                            **overrides})


CT2_EXPORTS: list[Path] = []  # this module's folder for CTranslate2 exports (set by the fixture below)


@pytest.fixture(scope="module", autouse=True)
def ct2_exports(tmp_path_factory) -> Path:
    CT2_EXPORTS[:] = [tmp_path_factory.mktemp("ct2-exports")]
    return CT2_EXPORTS[0]


def loader(base: dict, adapter: str | None, batch: BatchSettings, calls: list | None = None):
    def load():
        if calls is not None:
            calls.append(1)
        return load_transcriber(base, adapter, batch, CT2_EXPORTS[0])
    return load


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


# --- segmentation and joins (no model) ---------------------------------------------------------

def test_long_audio_is_cut_at_pauses_and_overlaps_where_there_is_none():
    rate = 16000
    rng = np.random.default_rng(0)
    speech = lambda s: (0.3 * rng.standard_normal(int(s * rate))).astype(np.float32)  # noqa: E731
    pause = np.zeros(int(0.5 * rate), dtype=np.float32)
    # 8-s "sentences" with 0.5-s pauses: cuts fall in pauses, no overlap
    audio = np.concatenate([part for _ in range(12) for part in (speech(8.0), pause)])
    bounds = chunk_bounds(len(audio), BatchSettings(), audio=audio)
    assert len(bounds) >= 4
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    for (s0, e0, _), (s1, _, overlapped) in zip(bounds, bounds[1:]):
        assert s1 == e0 and not overlapped
        assert np.abs(audio[e0 - 80:e0 + 80]).max() == 0  # the cut is inside a pause
    assert all(e - s <= 30 * rate for s, e, _ in bounds)
    # continuous speech: fixed 30-s chunks overlapping by 2 s
    audio = speech(75.0)
    bounds = chunk_bounds(len(audio), BatchSettings(), audio=audio)
    assert [(s, e) for s, e, _ in bounds] == [(0, 30 * rate), (28 * rate, 58 * rate), (56 * rate, 75 * rate)]
    assert [o for *_, o in bounds] == [False, True, True]
    assert chunk_bounds(16000, BatchSettings(), audio=audio[:16000]) == [(0, 16000, False)]


@pytest.mark.parametrize("previous, following, overlapped, expected", [
    ("the liver is normal in size and", "size and echotexture no mass", True,
     "the liver is normal in size and echotexture no mass"),
    ("no focal lesion in the spl", "lesion in the spleen or kidneys", True, "no focal lesion in the spleen or kidneys"),
    ("Revenue grew twelve percent.", "Twelve percent, driven by cloud.", True,
     "Revenue grew twelve percent, driven by cloud."),
    ("one two three", "four five", True, "one two three four five"),  # nothing shared: keep both
    ("the the", "the the end", False, "the the the the end"),         # no overlap: plain join
    ("", "start", True, "start"),
])
def test_overlapping_chunk_texts_keep_shared_words_once(previous, following, overlapped, expected):
    assert join_texts(previous, following, overlapped) == expected


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match=r"unknown setting.*transcription\.chunk\b"):
        BatchSettings.from_dict({"chunk": 20})
    with pytest.raises(ValueError, match="chunk_seconds"):
        BatchSettings.from_dict({"chunk_seconds": 45})



def test_a_dangling_link_a_folder_and_a_missing_file_are_error_records_not_a_failed_run(tmp_path, tiny_whisper,
                                                                                      models_dir, speech_clips):
    adapter = str(models_dir / "radiology" / "adapter" / VERSION_NEW / "adapter")
    batch = settings()
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    fill_inbox(inbox, speech_clips, ["a.wav"])
    (inbox / "link.wav").symlink_to(inbox / "gone.wav")
    (inbox / "folder.wav").mkdir()
    files = {p.name: str(p) for p in inbox.iterdir()} | {"vanished.wav": str(inbox / "vanished.wav")}
    first = run_inbox(files, results, loader(tiny_whisper, adapter, batch, []), batch, vertical="radiology")
    assert first["transcribed"] == 1 and first["failed"] == 3
    errors = {e["file"]: e["error"] for e in first["errors"]}
    assert "dangling symbolic link" in errors["link.wav"] and "is a directory" in errors["folder.wav"]
    assert "file not found" in errors["vanished.wav"]
    again = run_inbox(files, results, loader(tiny_whisper, adapter, batch, []), batch, vertical="radiology")
    assert again["new_files"] == 0  # each error is recorded once
    write_wav(inbox / "vanished.wav", speech_clips[1][1])  # the file arrives: it is taken now
    third = run_inbox(files, results, loader(tiny_whisper, adapter, batch, []), batch, vertical="radiology")
    assert third["new_files"] == 1 and third["transcribed"] == 1


# --- incremental runs --------------------------------------------------------------------------

def test_rerun_transcribes_only_new_or_changed_files_and_reports_bad_ones(tmp_path, tiny_whisper, models_dir,
                                                                         speech_clips):
    adapter = str(models_dir / "radiology" / "adapter" / VERSION_NEW / "adapter")
    assert Path(adapter).parent.name == VERSION_NEW
    batch = settings()
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    files = fill_inbox(inbox, speech_clips, ["a.wav", "b.wav", "c.wav"])
    (inbox / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (inbox / "notes.txt").write_text("not audio")
    (inbox / ".d.wav.part").write_bytes(b"being copied")  # hidden: left for a later run
    files = {p.name: str(p) for p in inbox.iterdir()}
    calls: list = []

    first = run_inbox(files, results, loader(tiny_whisper, adapter, batch, calls), batch, vertical="radiology")
    assert first["new_files"] == 5 and first["transcribed"] == 3 and first["failed"] == 2
    assert {e["file"] for e in first["errors"]} == {"broken.wav", "notes.txt"}
    assert all("cannot decode audio" in e["error"] for e in first["errors"])
    records = read_results(results)
    assert sorted(r["file"] for r in records) == ["a.wav", "b.wav", "broken.wav", "c.wav", "notes.txt"]
    ok = [r for r in records if r["status"] == "ok"]
    for r in ok:
        assert isinstance(r["text"], str) and r["duration_s"] > 0.5
        assert r["backend"] == "ctranslate2" and r["chunks"] == len(r["segments"]) >= 1  # Whisper: the default
        assert r["real_time_factor"] > 0 and r["adapter_version"] == VERSION_NEW
        assert r["base_model"] == tiny_whisper["name_or_path"] and r["run_id"] == first["run_id"]
    run_dir = results / first["run_id"]
    assert json.loads((run_dir / "summary.json").read_text())["transcribed"] == 3
    assert "broken.wav" in (run_dir / "summary.md").read_text()

    # nothing new: no model load, nothing written
    before = snapshot(results)
    second = run_inbox(files, results, loader(tiny_whisper, adapter, batch, calls), batch, vertical="radiology")
    assert second["new_files"] == 0 and second["already_done"] == 5 and len(calls) == 1
    assert snapshot(results) == before

    # two new files and one replaced file: exactly those three, in a new run folder
    files = fill_inbox(inbox, speech_clips[1:], ["d.wav", "e.wav"])
    write_wav(inbox / "a.wav", speech_clips[3][1])
    files = {p.name: str(p) for p in inbox.iterdir()}
    third = run_inbox(files, results, loader(tiny_whisper, adapter, batch, calls), batch, vertical="radiology")
    assert third["new_files"] == 3 and third["transcribed"] == 3
    new = [r["file"] for r in read_results(results) if r["run_id"] == third["run_id"]]
    assert sorted(new) == ["a.wav", "d.wav", "e.wav"]
    assert {k: v for k, v in snapshot(results).items() if k in before} == before  # earlier results untouched


def test_killed_run_loses_nothing_and_redoes_only_the_unfinished_batch(tmp_path, tiny_whisper, models_dir,
                                                                      speech_clips):
    adapter = str(models_dir / "radiology" / "adapter" / VERSION_NEW / "adapter")
    batch = settings(batch_size=2)
    names = [f"clip{i}.wav" for i in range(7)]
    files = fill_inbox(tmp_path / "inbox", speech_clips, names)
    results = tmp_path / "results"
    with pytest.raises(RunInterrupted):
        run_inbox(files, results, loader(tiny_whisper, adapter, batch), batch, interrupt_after_batches=2)
    written = read_results(results)
    assert [r["file"] for r in written] == names[:4]  # two whole batches, not the third
    (killed_run,) = [p for p in results.iterdir() if p.is_dir()]
    assert not (killed_run / "summary.json").exists()
    # the process died while writing a line: the torn line is ignored and its file redone
    with open(killed_run / RESULTS_FILE, "a") as handle:
        handle.write('{"file": "clip4.wav", "size_by')

    resumed = run_inbox(files, results, loader(tiny_whisper, adapter, batch), batch)
    assert resumed["new_files"] == 3 and resumed["already_done"] == 4
    counts = Counter(r["file"] for r in read_results(results))
    assert counts == Counter(names)  # every file once: none lost, none twice


def test_a_second_run_at_the_same_time_is_refused(tmp_path):
    import fcntl

    results = tmp_path / "results"
    results.mkdir()
    with open(results / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another transcription run"):
            run_inbox({}, results, lambda: pytest.fail("no model needed"), BatchSettings())
    assert run_inbox({}, results, lambda: pytest.fail("no model needed"), BatchSettings())["new_files"] == 0


# --- long-form ---------------------------------------------------------------------------------

SENTENCES = [
    "Good morning and welcome to the third quarter earnings call.",
    "Revenue grew in every region this quarter.",
    "Our cloud business added many new customers.",
    "Operating costs were lower than last year.",
    "We opened two new offices in Europe.",
    "The board approved a new share buyback program.",
    "Cash flow from operations remained strong.",
    "We expect demand to stay healthy next year.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_a_few_minutes_of_speech_are_transcribed_in_chunks_without_losing_or_repeating(tmp_path, embedded_base):
    """The transformers backend's own long-form chunking (the CTranslate2 backend uses VAD: test_ct2_backend.py)."""
    from vernacular.data.synth import synthesize

    opening = "Hello everyone and thank you for joining us today."
    middle = "Now let me hand over to our chief financial officer."
    closing = "Thank you all for listening and goodbye."
    body = SENTENCES * 6
    script = [opening, *body[:24], middle, *body[24:], closing]
    parts = [synthesize(s, "en-us") for s in script]
    audio = np.concatenate(parts)
    assert len(audio) / 16000 > 120

    ends = np.cumsum([len(p) for p in parts])
    first_minute = int(np.searchsorted(ends, 75 * 16000))  # sentences that end within 75 s: 3 chunks

    # default: cuts at pauses; then the first 75 s with no point counted as silence
    # (silence_ratio -1), so every join goes through the overlap merge
    for name, spoken, extra in (("pauses", script, {}), ("overlap", script[:first_minute], {"silence_ratio": -1.0})):
        clip = np.concatenate(parts[:len(spoken)])
        write_wav(tmp_path / f"{name}.wav", clip)
        batch = BatchSettings(device="cpu", batch_size=8, backend="transformers", **extra)
        transcriber = load_transcriber(embedded_base, None, batch)
        results = tmp_path / f"results-{name}"
        summary = run_inbox({f"{name}.wav": str(tmp_path / f"{name}.wav")}, results, lambda: transcriber, batch)
        (record,) = read_results(results)
        assert record["status"] == "ok" and record["chunks"] >= 3 and summary["chunks"] == record["chunks"]
        hypothesis = words(record["text"])
        checks = (opening, middle, closing) if name == "pauses" else (opening, spoken[-1])
        for part in checks:
            found = sum(w in hypothesis for w in set(words(part)))
            assert found >= 0.6 * len(set(words(part))), (name, part, record["text"])
        # no chunk transcribed twice, no large duplication at a join
        reference = words(" ".join(spoken))
        assert 0.8 * len(reference) <= len(hypothesis) <= 1.1 * len(reference), (name, len(hypothesis),
                                                                                  len(reference), record["text"])
        if name == "pauses":
            assert record["chunks"] >= 5
            assert hypothesis.count("chief") == 1 and hypothesis.count("goodbye") == 1


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_prints_json_lines_with_the_latest_adapter(tmp_path, models_dir, speech_clips):
    fill_inbox(tmp_path, speech_clips, ["one.wav", "two.wav"])
    (tmp_path / "bad.wav").write_bytes(b"\x00" * 64)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = project_with_adapters(tmp_path, models_dir)  # the latest adapter comes from its catalog
    done = subprocess.run([sys.executable, "-m", "vernacular", "transcribe", "--vertical", "radiology",
                           "--device", "cpu", str(tmp_path / "one.wav"),
                           str(tmp_path / "bad.wav"), str(tmp_path / "two.wav")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert done.returncode == 1, done.stderr  # one file failed
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["file"]).name for r in lines] == ["one.wav", "bad.wav", "two.wav"]
    assert [r["status"] for r in lines] == ["ok", "error", "ok"]
    assert "cannot decode audio" in lines[1]["error"]
    assert all(r["adapter_version"] == VERSION_NEW for r in lines)
    assert lines[0]["duration_s"] > 0.5 and isinstance(lines[0]["text"], str)


def test_cli_pinned_adapter_and_missing_adapter(tmp_path, models_dir, speech_clips, capsys, monkeypatch):
    from vernacular.serving.cli import main

    fill_inbox(tmp_path, speech_clips, ["one.wav"])
    monkeypatch.chdir(project_with_adapters(tmp_path, models_dir))
    pinned = models_dir / "radiology" / "adapter" / VERSION_OLD / "adapter"
    assert main(["--vertical", "radiology", "--adapter", str(pinned),
                 "--device", "cpu", str(tmp_path / "one.wav")]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["adapter_version"] == VERSION_OLD and record["status"] == "ok"

    # a missing path is an error record, after the good file, and the exit status says so
    assert main(["--vertical", "radiology", "--adapter", str(pinned), "--device", "cpu", str(tmp_path / "gone.wav"),
                 str(tmp_path / "one.wav")]) == 1
    records = {Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records["one.wav"]["status"] == "ok" and "file not found" in records["gone.wav"]["error"]

    assert main(["--vertical", "finance", str(tmp_path / "one.wav")]) == 2
    assert "run `kedro run --pipeline=finance` first" in capsys.readouterr().err


def test_plain_vernacular_still_runs_kedro():
    done = subprocess.run([sys.executable, "-m", "vernacular", "--help"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--pipeline" in done.stdout and "--load-versions" in done.stdout
    assert all(f"vernacular {sub}" in done.stdout for sub in ("transcribe", "export", "push"))  # listed first


# --- Kedro -------------------------------------------------------------------------------------

def test_registry_keeps_transcription_out_of_training_runs():
    from vernacular.pipeline_registry import VERTICALS, register_pipelines

    pipelines = register_pipelines()
    for vertical in VERTICALS:
        nodes = {n.name for n in pipelines[f"{vertical}.transcribe"].nodes}
        assert nodes == {f"{vertical}.transcribe_inbox"}
        assert not nodes & {n.name for n in pipelines[vertical].nodes}
        assert not nodes & {n.name for n in pipelines["__default__"].nodes}


def project_with_adapters(tmp_path: Path, models_dir: Path) -> Path:
    root = scratch_project(tmp_path / "project")
    shutil.copytree(models_dir / "radiology", root / "data" / "06_models" / "radiology")
    return root


def run_transcribe(root: Path, load_versions: dict | None = None) -> dict:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    params = {"radiology": {"transcription": {"device": "cpu", "batch_size": 2,
                                              "decoding": {"min_new_tokens_cap": 4, "max_tokens_per_second": 1.0}}}}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        bootstrap_project(root)
        with KedroSession.create(project_path=root, runtime_params=params) as session:
            outputs = session.run(pipeline_name="radiology.transcribe", load_versions=load_versions)
    return outputs["radiology.transcription_summary"].load()  # a free output: Kedro hands back its MemoryDataset


def test_kedro_transcribe_pipeline_is_incremental_and_pins_adapter_versions(tmp_path, models_dir, speech_clips):
    root = project_with_adapters(tmp_path, models_dir)
    inbox = root / "data" / "01_raw" / "radiology" / "inbox"
    fill_inbox(inbox / "2026-11-24", speech_clips, ["a.wav", "b.wav", "c.wav"])
    results = root / "data" / "07_model_output" / "radiology" / "transcriptions"

    first = run_transcribe(root)
    assert first["transcribed"] == 3 and first["adapter_version"] == VERSION_NEW  # latest by default
    records = read_results(results)
    assert sorted(r["file"] for r in records) == ["2026-11-24/a.wav", "2026-11-24/b.wav", "2026-11-24/c.wav"]

    before = snapshot(results)
    assert run_transcribe(root)["new_files"] == 0
    assert snapshot(results) == before

    fill_inbox(inbox / "2026-11-25", speech_clips, ["d.wav"])
    pinned = run_transcribe(root, {"radiology.adapter": VERSION_OLD})
    assert pinned["new_files"] == 1 and pinned["adapter_version"] == VERSION_OLD
    (record,) = [r for r in read_results(results) if r["run_id"] == pinned["run_id"]]
    assert record["file"] == "2026-11-25/d.wav" and record["adapter_version"] == VERSION_OLD
    assert len([p for p in results.iterdir() if p.is_dir()]) == 2


def test_kedro_transcribe_with_an_empty_inbox_succeeds_without_a_model(tmp_path, models_dir):
    root = project_with_adapters(tmp_path, models_dir)
    (root / "data" / "06_models" / "radiology" / "base_model.json").write_text(
        json.dumps({"name_or_path": "/nonexistent", "source": "local directory", "local_dir": "/nonexistent"}))
    summary = run_transcribe(root)
    assert summary["new_files"] == 0


def test_cli_takes_folders_writes_to_an_output_folder_and_never_over_it(tmp_path, models_dir, speech_clips,
                                                                        capsys, monkeypatch):
    from vernacular.serving.cli import main

    inbox = tmp_path / "calls"
    fill_inbox(inbox / "monday", speech_clips, ["a.wav", "b.flac"])
    fill_inbox(inbox / "tuesday", speech_clips, ["c.wav"])
    (inbox / "notes.txt").write_text("not audio")
    (inbox / ".partial.wav").write_bytes(b"\0" * 10)  # hidden: a file still being copied in
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(project_with_adapters(tmp_path, models_dir))
    pinned = models_dir / "radiology" / "adapter" / VERSION_OLD / "adapter"
    out = tmp_path / "results"
    assert main(["--vertical", "radiology", "--adapter", str(pinned), "--device", "cpu", "--output", str(out),
                 str(inbox), str(tmp_path / "empty")]) == 1  # the empty folder is an error record
    captured = capsys.readouterr()
    assert captured.out == "" and "4 files, 1 failed" in captured.err and "files: 100%" in captured.err
    records = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [Path(r["file"]).name for r in records] == ["a.wav", "b.flac", "c.wav", "empty"]
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "error"]
    assert "is a directory" in records[3]["error"]

    before = (out / "transcripts.jsonl").read_bytes()
    assert main(["--vertical", "radiology", "--adapter", str(pinned), "--device", "cpu", "--output", str(out),
                 str(inbox)]) == 2
    assert "choose a new folder" in capsys.readouterr().err
    assert (out / "transcripts.jsonl").read_bytes() == before
