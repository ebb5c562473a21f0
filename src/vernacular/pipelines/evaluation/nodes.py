"""Evaluation node: base vs adapter on the test split."""

from __future__ import annotations

import logging

import pandas as pd

from vernacular.evaluation import EvaluationSettings, evaluate_adapter, render_summary

log = logging.getLogger(__name__)


def evaluate_on_test(manifest: pd.DataFrame, base_model: dict, adapter: str, training_metrics: dict,
                     evaluation: dict, vertical: str) -> tuple[dict, str, pd.DataFrame]:
    """Return (metrics JSON, Markdown summary, per-utterance transcripts)."""
    test = manifest[manifest["split"] == "test"]
    metrics, transcripts = evaluate_adapter(test, base_model, adapter, EvaluationSettings.from_dict(evaluation))
    metrics["vertical"] = vertical
    metrics["adapter_path"] = adapter
    metrics["training_run"] = training_metrics["run_id"]
    log.info("%s test WER (%s): base %.1f%% -> adapter %.1f%%", vertical, metrics["normaliser"],
             100 * metrics["base"]["normalised"]["wer"], 100 * metrics["adapter"]["normalised"]["wer"])
    return metrics, render_summary(metrics, training_metrics, vertical), transcripts
