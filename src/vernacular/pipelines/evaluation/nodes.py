"""Evaluation node: base vs adapter on the test split."""

from __future__ import annotations

import pandas as pd

from vernacular.common.storage import StorageLayout
from vernacular.evaluation.run import EvaluationSettings, evaluate_vertical


def evaluate_on_test(manifest: pd.DataFrame, base_model: dict, adapter: str, training_metrics: dict,
                     evaluation: dict, vertical: str, storage: dict):
    """(metrics JSON, Markdown summary, per-utterance transcripts, WER-per-group figure, scatter figure)."""
    layout = StorageLayout.for_vertical(vertical, storage)
    return evaluate_vertical(manifest, base_model, adapter, training_metrics, EvaluationSettings.from_dict(evaluation),
                             vertical, layout.evaluation_cache_dir, layout.control_dir)
