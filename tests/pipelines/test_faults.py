"""A run killed with SIGKILL during ingestion and again during features, then run again, ends with the
same manifest and features as a run never interrupted, and leaves no half-written file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.paths import scratch_project

pytestmark = pytest.mark.slow  # two Kedro runs in subprocesses

PARAMS = "radiology.source.max_sentences=24"
COMMAND = [sys.executable, "-m", "kedro", "run", "--pipeline=radiology", "--to-nodes=radiology.build_features",
           f"--params={PARAMS}"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}


def run_to_end(project: Path) -> None:
    done = subprocess.run(COMMAND, cwd=project, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_when(project: Path, ready, timeout: float = 300, params: str = PARAMS) -> bool:
    """Start the run, SIGKILL it as soon as `ready()` holds; True when it was killed mid-way."""
    command = [*COMMAND[:-1], f"--params={params}"]
    process = subprocess.Popen(command, cwd=project, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    process.kill()
    process.wait()
    return False


def latest(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_dir())[-1] / folder.name


def outcome(project: Path) -> tuple[pd.DataFrame, dict]:
    manifest = pd.read_csv(latest(project / "data/03_primary/radiology/manifest.csv"), dtype=str)
    index = pd.read_json(latest(project / "data/04_feature/radiology/features_index.json"), typ="series")
    return manifest[["utterance_id", "text", "speaker", "split", "duration"]], dict(index["counts"])


def test_killed_during_ingestion_and_features_then_rerun_matches_an_uninterrupted_run(tmp_path):
    reference = scratch_project(tmp_path / "reference")
    run_to_end(reference)

    project = scratch_project(tmp_path / "killed")
    synthetic = project / "data/01_raw/radiology/synthetic/audio"
    assert kill_when(project, lambda: synthetic.is_dir() and any(synthetic.glob("*.wav"))), "ingestion ended first"
    assert not (project / "data/03_primary/radiology/manifest.csv").exists()
    # killed once the per-utterance store holds its first finished file: one utterance per batch leaves
    # the other 23 (and the shards) still to do, a window a fast machine cannot close before the poll
    # (batch size is not part of any fingerprint: features do not depend on it)
    store = project / "data/04_feature/radiology/cache/utterances"
    assert kill_when(project, lambda: store.is_dir() and any(store.rglob("*.pt")),
                     params=f"{PARAMS},radiology.features.batch_size=1"), "features ended first"
    assert not (project / "data/04_feature/radiology/features_index.json").exists()
    run_to_end(project)

    manifest, counts = outcome(project)
    expected_manifest, expected_counts = outcome(reference)
    manifest, expected_manifest = (m.sort_values("utterance_id").reset_index(drop=True)
                                   for m in (manifest, expected_manifest))
    # espeak-ng is not sample-exact across processes (a clip can differ by a few dozen samples), so two
    # independent runs agree on the rows exactly and on durations within 10 ms
    columns = ["utterance_id", "text", "speaker", "split"]
    pd.testing.assert_frame_equal(manifest[columns], expected_manifest[columns])
    gap = (manifest["duration"].astype(float) - expected_manifest["duration"].astype(float)).abs().max()
    assert gap < 0.01, gap
    assert counts == expected_counts
    # the run killed in ingestion saved no manifest; the one killed in features had saved one, the
    # same rows as the last run's
    versions = sorted((project / "data/03_primary/radiology/manifest.csv").iterdir())
    assert len(versions) == 2
    first, last = (pd.read_csv(v / "manifest.csv", dtype=str) for v in versions)
    pd.testing.assert_frame_equal(first, last)
    # no temporary files or folders left behind
    leftovers = [p for p in (project / "data").rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
