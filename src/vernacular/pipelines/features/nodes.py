"""Features nodes: resolve the base model, then cached model inputs and label ids."""

from __future__ import annotations

import logging

import pandas as pd

from vernacular.common.storage import StorageLayout
from vernacular.data.features import FeatureSettings, extract_features
from vernacular.data.ingestion import require_usable_rows
from vernacular.models.loading import ModelSettings, load_processor, resolve_base_model

log = logging.getLogger(__name__)


def prepare_base_model(model: dict, storage: dict, vertical: str) -> dict:
    """Resolve `model.base_model` (embedded default, local directory or hub id) to a loadable location."""
    settings = ModelSettings.from_dict(model)
    cache = StorageLayout.for_vertical(vertical, storage).base_model_cache_dir
    return resolve_base_model(settings.base_model, cache, family=settings.family, language=settings.language,
                              task=settings.task)


def build_features(manifest: pd.DataFrame, base_model: dict, features: dict, storage: dict, vertical: str) -> dict:
    """Model input features and label ids for the training splits; reused when inputs are unchanged."""
    require_usable_rows(manifest, vertical)
    settings = FeatureSettings.from_dict(features)
    index = extract_features(manifest, load_processor(base_model), StorageLayout.for_vertical(vertical, storage)
                             .feature_cache_dir, splits=tuple(settings.splits), batch_size=settings.batch_size,
                             max_label_tokens=settings.max_label_tokens, family=base_model, workers=settings.workers)
    log.info("features %s (%s family): %s (%s)", index["fingerprint"], index["family"], index["counts"],
             "reused cache entry" if index["reused"] else
             f"{index['utterances_computed']} utterances computed, {index['utterances_from_store']} from the store")
    return index
