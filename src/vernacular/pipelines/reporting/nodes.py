"""Reporting nodes: the cost page and the adapter card, from the measured run."""

from __future__ import annotations

import logging

import pandas as pd

from vernacular.reporting.adapter_card import build_adapter_card, write_card_into_adapter
from vernacular.reporting.cost import CostSettings, cost_report

log = logging.getLogger(__name__)


def report_costs(training_metrics: dict, eval_metrics: dict, prices: dict, cost: dict, vertical: str):
    """(Markdown page, matplotlib figure, self-contained HTML page, projection JSON)."""
    return cost_report(training_metrics, eval_metrics, prices, CostSettings.from_dict(cost), vertical)


def write_adapter_card(ingestion_summary: dict, manifest: pd.DataFrame, base_model: dict, training_metrics: dict,
                       eval_metrics: dict, source: dict, card: dict, vertical: str) -> str:
    """The adapter card (Markdown) for the `<vertical>.adapter_card` dataset; also the README.md of
    the evaluated adapter's folder, replacing PEFT's empty template, so the folder is Hub-ready."""
    text = build_adapter_card(ingestion_summary, manifest, base_model, training_metrics, eval_metrics, vertical,
                              source, card=card)
    readme = write_card_into_adapter(eval_metrics["adapter_path"], text) if eval_metrics.get("adapter_path") else None
    log.info("%s adapter card: %d lines (training run %s)%s", vertical, text.count("\n"), training_metrics["run_id"],
             f", also {readme}" if readme else "")
    return text
