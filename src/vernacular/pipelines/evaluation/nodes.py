"""Evaluation node: base vs adapter on the test split."""

from __future__ import annotations

import pandas as pd

from vernacular.common.htmlpage import figure_png
from vernacular.common.storage import StorageLayout
from vernacular.evaluation.report import render_evaluation_html
from vernacular.evaluation.run import EvaluationSettings, evaluate_vertical
from vernacular.serving.batch import BatchSettings


def evaluate_on_test(manifest: pd.DataFrame, base_model: dict, adapter: str, training_metrics: dict,
                     evaluation: dict, transcription: dict, vertical: str, storage: dict):
    """(metrics JSON, Markdown summary, per-utterance transcripts, WER-per-group figure, scatter figure,
    HTML page with the headline in words and both figures). `transcription` (the serving settings)
    decides which served model the evaluation also checks and times."""
    layout = StorageLayout.for_vertical(vertical, storage)
    metrics, summary, transcripts, wer_plot, scatter = evaluate_vertical(
        manifest, base_model, adapter, training_metrics, EvaluationSettings.from_dict(evaluation), vertical,
        layout.evaluation_cache_dir, layout.control_dir, serving=BatchSettings.from_dict(transcription),
        ct2_cache_dir=layout.ct2_cache_dir, unseen_voice_dir=layout.unseen_voice_dir)
    page = render_evaluation_html(metrics, training_metrics, vertical, [
        (figure_png(wer_plot), "Word error rate of the base model and the adapter per group, with 95% intervals"),
        (figure_png(scatter), "Each test recording: base model WER against adapter WER (below the diagonal: better)")])
    return metrics, summary, transcripts, wer_plot, scatter, page
