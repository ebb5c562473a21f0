"""Verticals are namespaced variants of one pipeline: registry, parameters, catalog paths, tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.paths import REPO, scratch_project

pytestmark = pytest.mark.slow  # end-to-end Kedro runs: minutes; `pytest -m "not slow"` skips them

VERTICALS = ("radiology", "finance", "accent")


@pytest.fixture(scope="module")
def context():
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(REPO)
    with KedroSession.create(project_path=REPO) as session:
        yield session.load_context()


def test_registry_has_every_vertical_and_stage():
    from vernacular.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    stages = ("ingestion", "features", "training", "evaluation", "reporting")
    for vertical in VERTICALS:
        assert vertical in pipelines
        assert all(f"{vertical}.{stage}" in pipelines for stage in stages)
        assert all(n.name.startswith(f"{vertical}.") for n in pipelines[vertical].nodes)
    assert len(pipelines["__default__"].nodes) == sum(len(pipelines[v].nodes) for v in VERTICALS)
    # the same code: node functions are identical across verticals
    functions = {v: sorted(n.func.__name__ for n in pipelines[v].nodes) for v in VERTICALS}
    assert functions["radiology"] == functions["finance"] == functions["accent"]


def test_every_vertical_has_the_same_parameter_keys(context):
    params = context.params
    keys = {v: sorted(params[v]) for v in VERTICALS}
    assert keys["radiology"] == keys["finance"] == keys["accent"]
    assert {params[v]["vertical"] for v in VERTICALS} == set(VERTICALS)
    assert "prices" in params


def test_dataset_factories_resolve_distinct_paths_per_vertical(context):
    catalog = context.catalog
    for name in ("manifest", "adapter", "eval_metrics", "cost_report"):
        paths = {v: str(catalog.get(f"{v}.{name}")._filepath) for v in VERTICALS}
        assert len(set(paths.values())) == 3, paths
        assert all(f"/{v}/" in paths[v] for v in VERTICALS)
    from vernacular.common.storage import StorageLayout
    storage = {v: str(StorageLayout.for_vertical(v, context.params[v]["storage"]).checkpoint_dir) for v in VERTICALS}
    assert len(set(storage.values())) == 3


def run_tiny(tmp_path: Path, vertical: str) -> Path:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = scratch_project(tmp_path / "project")
    params = {vertical: {
        "source": {"max_sentences": 14},
        "training": {"max_steps": 2, "batch_size": 4, "progress": False},
        "evaluation": {"max_utterances": 3, "latency_segments": 1, "latency_repeats": 1, "progress": False},
    }}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        bootstrap_project(root)
        with KedroSession.create(project_path=root, runtime_params=params) as session:
            session.run(pipeline_name=vertical)
    return root


@pytest.mark.parametrize("vertical", ["finance", "accent"])
def test_tiny_run_of_a_variant_writes_its_own_outputs(vertical, tmp_path):
    root = run_tiny(tmp_path, vertical)
    reports = root / "data" / "08_reporting"
    assert [p.name for p in reports.iterdir()] == [vertical]
    metrics_dir = reports / vertical / "eval_metrics.json"
    (version,) = list(metrics_dir.iterdir())
    metrics = json.loads((version / "eval_metrics.json").read_text())
    assert metrics["vertical"] == vertical
    manifest_dir = root / "data" / "03_primary" / vertical / "manifest.csv"
    assert next(manifest_dir.iterdir()).is_dir()
    config = yaml.safe_load((REPO / "conf" / "base" / "parameters.yml").read_text())
    held_out = set(config[vertical]["split"]["test_only_speakers"])
    import pandas as pd

    manifest = pd.read_csv(next(manifest_dir.iterdir()) / "manifest.csv")
    assert set(manifest.loc[manifest["speaker"].isin(held_out), "split"]) <= {"test"}
    assert metrics["n_utterances"] == min(3, int((manifest["split"] == "test").sum())) >= 1
