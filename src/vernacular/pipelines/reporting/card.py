"""Adapter-card node: the run's provenance, results and limitations as Markdown beside the adapter."""

from __future__ import annotations

import logging

import pandas as pd

from vernacular.adapter_card import build_adapter_card

log = logging.getLogger(__name__)


def write_adapter_card(ingestion_summary: dict, manifest: pd.DataFrame, base_model: dict, training_metrics: dict,
                       eval_metrics: dict, source: dict, vertical: str) -> str:
    """Return the adapter card (Markdown) for the `<vertical>.adapter_card` dataset."""
    card = build_adapter_card(ingestion_summary, manifest, base_model, training_metrics, eval_metrics, vertical,
                              source)
    log.info("%s adapter card: %d lines (training run %s)", vertical, card.count("\n"), training_metrics["run_id"])
    return card
