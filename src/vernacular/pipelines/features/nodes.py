"""Features nodes: resolve the base model, then cached log-mel features and label ids."""

from __future__ import annotations

import logging

import pandas as pd

from vernacular.families import family_for
from vernacular.features import extract_features
from vernacular.models import load_processor, resolve_base_model

log = logging.getLogger(__name__)


def prepare_base_model(model: dict) -> dict:
    """Resolve `model.base_model` (embedded default, local directory or hub id) to a loadable location."""
    return resolve_base_model(model["base_model"], model["cache_dir"], family=model.get("family", "auto"))


def build_features(manifest: pd.DataFrame, base_model: dict, features: dict, storage: dict) -> dict:
    """Model input features and label ids for the training splits; reused when inputs are unchanged."""
    processor = load_processor(base_model)
    index = extract_features(manifest, processor, storage["feature_cache_dir"], splits=tuple(features["splits"]),
                             batch_size=features["batch_size"], max_label_tokens=features["max_label_tokens"],
                             family=family_for(base_model))
    log.info("features %s (%s family): %s (%s)", index["fingerprint"], index["family"], index["counts"],
             "reused cache" if index["reused"] else "computed")
    return index
