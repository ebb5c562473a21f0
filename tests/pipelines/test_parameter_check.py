"""Every vertical's parameters are checked before the first node runs; the base conf documents the defaults."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from tests.paths import REPO, scratch_project
from vernacular.data.augment import AugmentSettings
from vernacular.data.manifest import AudioLimits
from vernacular.data.ingestion import ReplaySettings
from vernacular.evaluation.run import EvaluationSettings
from vernacular.reporting.adapter_card import CardSettings
from vernacular.reporting.cost import CostSettings
from vernacular.serving.batch import BatchSettings
from vernacular.training.settings import LoraSettings, TrainSettings
from vernacular.verticals import VERTICALS, check_parameters


def _conf_parameters() -> dict:
    """The base parameters as Kedro resolves them (anchors, globals)."""
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="local",
                               merge_strategy={"parameters": "soft"})
    return loader["parameters"]


def test_every_vertical_of_the_base_conf_is_valid():
    checked = check_parameters(_conf_parameters(), VERTICALS)
    assert set(checked) == set(VERTICALS)
    assert checked["radiology"].evaluation.decoding.max_ngram_repeats == 2
    assert checked["radiology"].storage.suffix == ""


@pytest.mark.parametrize("edit, fragment", [
    (lambda p: p.update(trainig=p.pop("training")), "radiology.trainig"),
    (lambda p: p["source"].update(pth="x.csv"), "radiology.source.pth"),
    (lambda p: p["training"].update(epochs="two"), "radiology.training.epochs: expected int, got str 'two'"),
    (lambda p: p["evaluation"]["bootstrap"].update(n_resample=5), "radiology.evaluation.bootstrap.n_resample"),
    (lambda p: p["transcription"]["decoding"].update(num_beams=1.5), "radiology.transcription.decoding.num_beams"),
])
def test_a_misspelled_or_mistyped_key_is_named(edit, fragment):
    params = _conf_parameters()
    edit(params["radiology"])
    with pytest.raises(ValueError) as info:
        check_parameters(params, ["radiology"])
    assert fragment in str(info.value)


def test_anchors_of_the_base_conf_restate_the_dataclass_defaults():
    """conf/base/parameters.yml lists every setting for the reader; the dataclasses are the defaults.
    Data locations are the exception: conf names the project's data, the library knows none."""
    locations = {("_evaluation", "forgetting", "sets"), ("_replay", "sets")}
    raw = yaml.safe_load((REPO / "conf" / "base" / "parameters.yml").read_text())
    for anchor, cls in [("_training", TrainSettings), ("_adapter", LoraSettings), ("_augmentation", AugmentSettings),
                        ("_audio_limits", AudioLimits), ("_cost", CostSettings), ("_transcription", BatchSettings),
                        ("_evaluation", EvaluationSettings), ("_card", CardSettings), ("_replay", ReplaySettings)]:
        defaults = dataclasses.asdict(cls())
        for key, value in raw[anchor].items():
            if (anchor, key) in locations:
                continue
            expected = defaults[key]
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if (anchor, key, k) not in locations}
                expected = {k: expected[k] for k in value}
            assert value == expected or (isinstance(value, list) and list(expected) == value), (anchor, key, value,
                                                                                                expected)


def test_kedro_run_stops_before_ingestion_on_a_misspelled_key(tmp_path):
    project = scratch_project(tmp_path / "project")
    (project / "conf" / "local" / "parameters.yml").write_text("radiology:\n  training:\n    epochz: 3\n")
    result = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipeline=radiology"], cwd=project,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "radiology.training.epochz" in result.stdout + result.stderr
    assert not (project / "data").exists() or not any((project / "data").rglob("*.wav")), "ingestion ran"
    assert "load_source" not in result.stdout + result.stderr.split("radiology.training.epochz")[0]


def _run(project, runtime_params=None):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(pipeline_name="radiology.ingestion")


def test_a_second_run_of_a_vertical_stops_at_once(tmp_path, monkeypatch):
    from vernacular.common.fileio import LockedError, exclusive_lock
    from vernacular.common.storage import StorageLayout

    project = scratch_project(tmp_path / "project")
    monkeypatch.chdir(project)
    lock = project / StorageLayout.for_vertical("radiology").run_lock
    with exclusive_lock(lock, "the first run"):  # as a first `kedro run` holds it
        with pytest.raises(LockedError, match=r"another `kedro run` of radiology holds .*radiology.lock"):
            _run(project)
    assert not (project / "data" / "01_raw").exists(), "the second run started ingestion"


def test_storage_paths_cannot_be_set_at_run_time(tmp_path, monkeypatch):
    project = scratch_project(tmp_path / "project")
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match=r"radiology.storage cannot be set at run time"):
        _run(project, {"radiology": {"storage": {"root": str(tmp_path / "elsewhere")}}})
    assert not (tmp_path / "elsewhere").exists()


def test_an_output_that_cannot_be_written_stops_the_run_before_its_first_node(tmp_path, monkeypatch):
    project = scratch_project(tmp_path / "project")
    monkeypatch.chdir(project)
    (project / "data" / "08_reporting").mkdir(parents=True)
    (project / "data" / "08_reporting" / "radiology").write_text("a file where the reports folder goes")
    with pytest.raises(OSError, match=r"output radiology\.\w+ cannot be saved: .*08_reporting/radiology is a file"):
        _run(project)
    assert not (project / "data" / "01_raw").exists() and not (project / "data" / "03_primary").exists()
    from vernacular.common.fileio import exclusive_lock
    from vernacular.common.storage import StorageLayout

    with exclusive_lock(project / StorageLayout.for_vertical("radiology").run_lock, "check"):
        pass  # the failed run gave its lock back


def _doc_block(marker: str) -> str:
    """The YAML block that follows `<!-- marker ... -->` in docs/verticals.md."""
    text = (REPO / "docs" / "verticals.md").read_text()
    after = text[text.index(f"<!-- {marker}"):]
    return after[after.index("```yaml\n") + len("```yaml\n"):after.index("\n```", after.index("```yaml"))]


def _env_parameters(root, env: str, block: str) -> dict:
    from kedro.config import OmegaConfigLoader

    from vernacular.settings import CONFIG_LOADER_ARGS

    scratch_project(root)
    (root / "conf" / env).mkdir()
    (root / "conf" / env / "parameters.yml").write_text(block)
    (root / "conf" / env / "globals.yml").write_text(f'storage_suffix: "-{env}"\n')
    return OmegaConfigLoader(str(root / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["parameters"]


def test_the_docs_vertical_in_another_language_is_a_valid_config(tmp_path):
    block = _doc_block("vertical-in-another-language")
    accent = check_parameters(_env_parameters(tmp_path, "de-calls", block), ["accent"])["accent"]
    assert (accent.model.base_model, accent.model.language, accent.model.task) == \
        ("embedded:whisper-base", "de", "transcribe")
    assert accent.evaluation.normaliser == "basic" and accent.evaluation.forgetting.manifest_format == "sidecar"
    assert [(p.format, p.split) for p in accent.source.parts] == [("sidecar", "train"), ("sidecar", "test")]
    assert accent.training.epochs == 1 and accent.storage.suffix == "-de-calls"  # the rest: base defaults

    english_only = block.replace("embedded:whisper-base", "embedded:whisper-tiny.en")
    with pytest.raises(ValueError, match="English-only"):
        check_parameters(_env_parameters(tmp_path / "en", "de-calls", english_only), ["accent"])
