"""The radiology pipeline end to end through Kedro's session and runner, on a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tests.paths import scratch_project

pytestmark = pytest.mark.slow  # end-to-end Kedro runs: minutes; `pytest -m "not slow"` skips them



def latest(folder: Path) -> Path:
    """Newest version of a versioned Kedro dataset: folder/<version>/<name>."""
    versions = sorted(p for p in folder.iterdir() if p.is_dir())
    assert versions, f"no versions in {folder}"
    return versions[-1] / folder.name


def tiny_params() -> dict:
    return {"radiology": {
        "source": {"max_sentences": 18},
        "training": {"max_steps": 2, "batch_size": 4, "progress": False, "checkpoint_every_steps": 1},
        "evaluation": {"max_utterances": 4, "latency_segments": 1, "latency_repeats": 1, "progress": False},
    }}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project's configuration in a scratch folder, run once with tiny settings."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = scratch_project(tmp_path_factory.mktemp("project"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        bootstrap_project(root)
        with KedroSession.create(project_path=root, runtime_params=tiny_params()) as session:
            session.run(pipeline_name="radiology")
        yield root, root / "data" / "06_models" / "base"  # where the run converts the embedded model


def test_ingestion_accounts_for_every_row_and_splits_by_sentence(project):
    root, _ = project
    summary = json.loads(latest(root / "data/08_reporting/radiology/ingestion_summary.json").read_text())
    assert summary["rows_in"] == summary["clean"] + summary["quarantined"] == 18
    manifest = pd.read_csv(latest(root / "data/03_primary/radiology/manifest.csv"))
    assert {"train", "test"} <= set(manifest["split"])
    assert manifest.groupby("text")["split"].nunique().max() == 1
    assert set(manifest.loc[manifest["speaker"] == "en-gb-x-gbcwmd+f3", "split"]) <= {"test"}
    assert all(Path(p).is_file() for p in manifest["audio_path"])


def test_adapter_is_plain_peft_naming_its_hub_base_with_its_card_as_readme(project):
    from huggingface_hub import ModelCard

    root, _ = project
    adapter = latest(root / "data/06_models/radiology/adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "openai/whisper-tiny.en"  # not this machine's conversion folder
    card = ModelCard.load(adapter / "README.md")  # the reporting stage replaced PEFT's empty template
    assert card.data.base_model == "openai/whisper-tiny.en" and card.data.license == "mit"
    assert [r.metric_type for r in card.data.eval_results] == ["wer", "cer"]
    assert card.text.strip() and (adapter / "README.md").read_text() == \
        latest(root / "data/06_models/radiology/adapter_card.md").read_text()
    training = json.loads(latest(root / "data/07_model_output/radiology/training_metrics.json").read_text())
    assert training["steps"] == 2 and training["device"] == "cpu"
    assert 0.003 < training["trainable_fraction"] < 0.005  # r=8 on q,v of tiny.en: ~0.39%
    # the weight type `quantization: auto` serves it with, measured on the validation split
    precision = json.loads((adapter / "serving_precision.json").read_text())
    assert precision == training["serving_precision"] and precision["split"] == "validation"
    assert precision["chosen"] == ("int8" if precision["loss_pts"] <= 0.5 else "float32")


def test_evaluation_reports_base_and_adapter(project):
    root, _ = project
    metrics = json.loads(latest(root / "data/08_reporting/radiology/eval_metrics.json").read_text())
    assert metrics["n_utterances"] == 4
    for name in ("base", "adapter"):
        assert 0 <= metrics[name]["normalised"]["wer"] and metrics[name]["raw"]["cer"] is not None
        assert metrics[name]["by_speaker"]
    for name in ("base", "adapter_unmerged", "adapter"):
        assert metrics["latency"][name]["seconds_per_segment"] > 0
    assert isinstance(metrics["latency"]["merged_equals_unmerged"], bool)
    transcripts = pd.read_csv(latest(root / "data/07_model_output/radiology/test_transcripts.csv"))
    assert list(transcripts.columns[-4:]) == ["reference", "base", "adapter", "served"] and len(transcripts) == 4
    assert metrics["served"]["backend"] == "ctranslate2" and metrics["served"]["latency"]["real_time_factor"] > 0
    summary = latest(root / "data/08_reporting/radiology/eval_summary.md").read_text()
    assert "WER (normalised)" in summary and "whisper_english" in summary
    chosen = metrics["served"]["precision"]["check"]["chosen"]
    assert metrics["served"]["compute_type"] == chosen and f"Served as {chosen}: the adapter's precision check" in summary
    page = latest(root / "data/08_reporting/radiology/eval_report.html").read_text()
    assert "With the adapter, the word error rate on the radiology test set (4 recordings" in page
    assert page.count("data:image/png;base64,") == 2 and "WER (normalised)" in page


def test_cost_report_says_cpu_and_has_a_plot(project):
    root, _ = project
    report = latest(root / "data/08_reporting/radiology/cost_report.md").read_text()
    assert "CPU" in report
    assert latest(root / "data/08_reporting/radiology/cost_plot.png").stat().st_size > 1000
    cost = json.loads(latest(root / "data/08_reporting/radiology/cost_metrics.json").read_text())
    assert cost["inputs"]["monthly_audio_hours"] == 10000
    assert cost["projection"]["vendor_usd_per_month"] == pytest.approx(10000 * 60 * 0.12)


def test_rerun_with_unchanged_inputs_reuses_features_and_does_not_resynthesise(project):
    from kedro.framework.session import KedroSession

    root, base_cache = project
    wavs = sorted((root / "data/01_raw/radiology/synthetic/audio").glob("*.wav"))
    stamps = [w.stat().st_mtime_ns for w in wavs]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        with KedroSession.create(project_path=root, runtime_params=tiny_params()) as session:
            session.run(pipeline_name="radiology", to_nodes=["radiology.build_features"])
    assert [w.stat().st_mtime_ns for w in wavs] == stamps
    indexes = sorted((root / "data/04_feature/radiology/features_index.json").iterdir())
    assert len(indexes) == 2
    first, second = (json.loads((p / "features_index.json").read_text()) for p in indexes)
    assert first["reused"] is False and second["reused"] is True
    assert first["fingerprint"] == second["fingerprint"]


def test_full_rerun_reuses_the_evaluation_and_a_changed_setting_does_not(project):
    from kedro.framework.session import KedroSession

    root, base_cache = project
    folder = root / "data/08_reporting/radiology/eval_metrics.json"
    before = len(list(folder.iterdir()))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        with KedroSession.create(project_path=root, runtime_params=tiny_params()) as session:
            session.run(pipeline_name="radiology", from_nodes=["radiology.evaluate_on_test"])
    first, rerun = (json.loads((p / "eval_metrics.json").read_text()) for p in sorted(folder.iterdir())[:1] +
                    sorted(folder.iterdir())[before:before + 1])
    assert len(list(folder.iterdir())) == before + 1  # a new version, nothing overwritten
    assert rerun["reused_from"] and first["reused_from"] is None
    assert rerun["adapter"]["normalised"]["wer"] == first["adapter"]["normalised"]["wer"]
    changed = tiny_params()
    changed["radiology"]["evaluation"]["max_utterances"] = 3
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        with KedroSession.create(project_path=root, runtime_params=changed) as session:
            session.run(pipeline_name="radiology", from_nodes=["radiology.evaluate_on_test"])
    latest_metrics = json.loads(latest(folder).read_text())
    assert latest_metrics["reused_from"] is None and latest_metrics["n_utterances"] == 3
