"""Reporting nodes: the cost page and the adapter card, from the measured run."""

from __future__ import annotations

import logging

import pandas as pd

from vernacular.reporting.adapter_card import build_adapter_card
from vernacular.reporting.cost import CostSettings, cost_report

log = logging.getLogger(__name__)


def report_costs(training_metrics: dict, eval_metrics: dict, prices: dict, cost: dict, vertical: str):
    """(Markdown page, matplotlib figure, self-contained HTML page, projection JSON)."""
    return cost_report(training_metrics, eval_metrics, prices, CostSettings.from_dict(cost), vertical)


def write_adapter_card(ingestion_summary: dict, manifest: pd.DataFrame, base_model: dict, training_metrics: dict,
                       eval_metrics: dict, source: dict, vertical: str) -> str:
    """The adapter card (Markdown) for the `<vertical>.adapter_card` dataset."""
    card = build_adapter_card(ingestion_summary, manifest, base_model, training_metrics, eval_metrics, vertical,
                              source)
    log.info("%s adapter card: %d lines (training run %s)", vertical, card.count("\n"), training_metrics["run_id"])
    return card
