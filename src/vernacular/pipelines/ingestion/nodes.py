"""Ingestion nodes: source -> validated 16 kHz audio + quarantine -> deterministic splits."""

from __future__ import annotations

import pandas as pd

from vernacular.common.storage import StorageLayout
from vernacular.data.ingestion import SourceSettings, SplitSettings, load_source as read_source, \
    split_corpus as assign_splits, validate_corpus as validate_rows
from vernacular.data.manifest import AudioLimits


def load_source(source: dict, split: dict, storage: dict, vertical: str) -> pd.DataFrame:
    """The configured source as manifest rows (see `vernacular.data.ingestion.load_source`)."""
    synthetic_dir = StorageLayout.for_vertical(vertical, storage).synthetic_dir
    return read_source(SourceSettings.from_dict(source), SplitSettings.from_dict(split), synthetic_dir)


def validate_corpus(raw_manifest: pd.DataFrame, audio_limits: dict, storage: dict,
                    vertical: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean rows with 16 kHz WAV copies, quarantined rows with reasons)."""
    clean_audio_dir = StorageLayout.for_vertical(vertical, storage).clean_audio_dir
    return validate_rows(raw_manifest, AudioLimits(**audio_limits), clean_audio_dir)


def split_corpus(clean_manifest: pd.DataFrame, quarantine: pd.DataFrame, raw_manifest: pd.DataFrame,
                 split: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(manifest with splits, full quarantine report, ingestion summary)."""
    return assign_splits(clean_manifest, quarantine, raw_manifest, SplitSettings.from_dict(split))
