"""The project's own Kedro datasets: adapters saved whole and readable by other accounts, report pages,
and the catalog as the commands outside a run see it."""

from __future__ import annotations

import os

import pytest
import torch
from kedro.io.core import Version
from tests.paths import REPO

from tests.paths import scratch_project
from vernacular.catalog_datasets import AdapterDataset, ProjectCatalog, ReportPageDataset
from vernacular.models.loading import AdapterNotFoundError


class SavesLikePeft:
    def save_pretrained(self, folder: str) -> None:
        (torch.zeros(2)).numpy().tofile(os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as handle:
            handle.write("{}")
        os.chmod(os.path.join(folder, "adapter_model.safetensors"), 0o600)  # as safetensors does


def test_adapter_folder_follows_the_umask_and_loads_as_the_newest_version(tmp_path):
    old = os.umask(0o022)
    try:
        AdapterDataset(str(tmp_path / "adapter"), version=Version(None, "2026-01-01T00.00.00.000Z")).save(
            {"model": SavesLikePeft(), "files": {"README.md": "card"}})
    finally:
        os.umask(old)
    folder = tmp_path / "adapter" / "2026-01-01T00.00.00.000Z" / "adapter"
    assert (folder / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755 and (folder / "README.md").read_text() == "card"
    assert AdapterDataset(str(tmp_path / "adapter"), version=Version(None, None)).load() == str(folder.resolve())


def test_report_page_is_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        ReportPageDataset(str(tmp_path / "p.html"), version=Version(None, "v1")).save("<html></html>")
    finally:
        os.umask(old)
    assert (tmp_path / "p.html" / "v1" / "p.html").stat().st_mode & 0o777 == 0o644


def test_project_catalog_outside_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(scratch_project(tmp_path / "project"))
    catalog = ProjectCatalog()
    with pytest.raises(AdapterNotFoundError, match=r"kedro run --pipeline=radiology"):
        catalog.latest_adapter("radiology")
    assert catalog.base_model("radiology") is None
    assert str(catalog.storage("radiology").checkpoint_dir) == "data/06_models/radiology/checkpoints"
    assert str(ProjectCatalog(env="speechocean").storage("accent").checkpoint_dir) == \
        "data/06_models/accent-speechocean/checkpoints"


def test_every_catalog_entry_has_the_kedro_viz_layer_of_its_stage():
    import re

    import yaml

    layers = {"01_raw": "raw", "02_intermediate": "intermediate", "03_primary": "primary", "04_feature": "feature",
              "05_model_input": "model_input", "06_models": "models", "07_model_output": "model_output",
              "08_reporting": "reporting"}
    # kedro-viz needs layers that follow the dataflow without a cycle: two entries sit in another
    # stage's folder (the base-model record in 06_models, the card beside the adapter)
    by_role = {"{vertical}.base_model": "feature", "{vertical}.adapter_card": "reporting"}
    catalog = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    for name, entry in catalog.items():
        folder = re.match(r"data/(\d\d_[a-z_]+)/", entry.get("filepath") or entry.get("path")).group(1)
        assert entry.get("metadata", {}).get("kedro-viz", {}).get("layer") == by_role.get(name, layers[folder]), name
