"""Evaluation node: base vs adapter on the test split."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from vernacular.evaluation import EvaluationSettings, evaluate_adapter_cached, headline, render_summary
from vernacular.plots import plot_group_wer, plot_utterance_scatter

log = logging.getLogger(__name__)


def evaluate_on_test(manifest: pd.DataFrame, base_model: dict, adapter: str, training_metrics: dict,
                     evaluation: dict, vertical: str, storage: dict):
    """Return (metrics JSON, Markdown summary, per-utterance transcripts, WER-per-group figure, scatter figure)."""
    settings = EvaluationSettings.from_dict(evaluation)
    test = manifest[manifest["split"] == "test"]
    # The forgetting check must not score sentences the adapter was trained on.
    seen = manifest.loc[manifest["split"] != "test", "text"].astype(str).tolist()
    control_cache = Path(storage["synthetic_dir"]).parent / "control"
    metrics, transcripts = evaluate_adapter_cached(test, base_model, adapter, settings,
                                                   cache_dir=storage.get("evaluation_cache_dir"),
                                                   control_cache_dir=control_cache, exclude_texts=seen)
    metrics["vertical"] = vertical
    metrics["adapter_path"] = adapter
    metrics["training_run"] = training_metrics["run_id"]
    log.info("%s test %s (%s)", vertical, headline(metrics), metrics["normaliser"])
    forgetting = metrics["forgetting"]
    if forgetting.get("enabled"):
        log.log(logging.WARNING if forgetting["flagged"] else logging.INFO,
                "%s forgetting check: general-speech WER %.1f%% -> %.1f%% (%+.1f pts, margin %g)%s", vertical,
                100 * forgetting["base"]["wer"], 100 * forgetting["adapter"]["wer"], forgetting["wer_change_pts"],
                forgetting["margin_pts"], " FLAGGED" if forgetting["flagged"] else "")
    wer_plot = plot_group_wer(metrics["statistics"], settings.group_columns,
                              title=f"{vertical}: WER base vs adapter")
    per_utt = metrics["per_utterance"]
    scatter = plot_utterance_scatter(per_utt["base_wer"], per_utt["adapter_wer"], labels=per_utt["speaker"],
                                     title=f"{vertical}: per-utterance WER ({len(per_utt['base_wer'])} utterances)")
    return metrics, render_summary(metrics, training_metrics, vertical), transcripts, wer_plot, scatter
