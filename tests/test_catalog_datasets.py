"""The project's own Kedro datasets: adapters saved whole and readable by other accounts, report pages,
and the catalog as the commands outside a run see it."""

from __future__ import annotations

import os

import pytest
import torch
from kedro.io.core import DatasetError, Version
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


def test_adapter_and_report_on_fsspec_storage_round_trip(tiny_whisper, tmp_path):
    """memory:// stands for s3://, gs://, abfs://: the adapter is uploaded whole, versioned, and
    loads through a local copy with plain peft; report pages and inbox files too."""
    import fsspec
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import WhisperForConditionalGeneration

    from vernacular.catalog_datasets import FilePathDataset, InboxDataset

    memory = fsspec.filesystem("memory")
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper["local_dir"])
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    url = "memory:///store/radiology/adapter"
    AdapterDataset(url, version=Version(None, "v1")).save({"model": model, "files": {"README.md": "card"}})
    assert memory.isfile("/store/radiology/adapter/v1/adapter/adapter_config.json")
    with pytest.raises(DatasetError, match="must not exist"):  # never overwritten
        AdapterDataset(url, version=Version(None, "v1")).save(model)
    AdapterDataset(url, version=Version(None, "v2")).save(model)

    cache = tmp_path / "cache"
    dataset = AdapterDataset(url, version=Version(None, None), local_cache=str(cache))
    assert dataset.exists()
    local = dataset.load()
    assert local.startswith(str(cache)) and local.rstrip("/").endswith("v2/adapter")
    loaded = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(tiny_whisper["local_dir"]), local)
    assert sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n) == \
        sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert not AdapterDataset("memory:///store/none", version=Version(None, None)).exists()

    page = ReportPageDataset("memory:///store/reports/cost.html", version=Version(None, "v1"))
    page.save("<html>cost</html>")
    assert ReportPageDataset("memory:///store/reports/cost.html", version=Version(None, None)).load() == \
        "<html>cost</html>"

    memory.pipe("/store/inbox/day1/call.wav", b"RIFF....")
    inbox = InboxDataset(path="memory:///store/inbox", dataset={"type": FilePathDataset,
                                                                  "local_cache": str(cache)}).load()
    assert list(inbox) == ["day1/call.wav"]
    copy = next(iter(inbox.values()))()
    assert open(copy, "rb").read() == b"RIFF...." and copy.startswith(str(cache))
    assert InboxDataset(path="memory:///store/empty", dataset=FilePathDataset).load() == {}
