"""Transcription node: the inbox's new files, transcribed with the chosen adapter version."""

from __future__ import annotations

import logging
from typing import Any, Callable

from vernacular.common.storage import StorageLayout
from vernacular.serving.batch import BatchSettings, load_transcriber, run_inbox

log = logging.getLogger(__name__)


def transcribe_inbox(inbox: dict[str, Callable[[], Any]], base_model: dict, adapter: str, transcription: dict,
                     storage: dict, vertical: str) -> dict:
    """Transcribe what is new in the inbox; results go to the vertical's transcriptions folder, one per run.

    Returns the run summary. The model is loaded only when there is something new.
    """
    files = {file_id: load() for file_id, load in inbox.items()}
    settings = BatchSettings.from_dict(transcription)
    layout = StorageLayout.for_vertical(vertical, storage)
    summary = run_inbox(files, layout.transcriptions_dir,
                        lambda: load_transcriber(base_model, adapter, settings, layout.ct2_cache_dir),
                        settings, vertical=vertical)
    if summary["new_files"]:
        log.info("%s: transcribed %d of %d new file(s) (%d failed), real-time factor %s, adapter %s -> %s",
                 vertical, summary["transcribed"], summary["new_files"], summary["failed"],
                 f"{summary['real_time_factor']:.3f}" if summary["real_time_factor"] else "n/a",
                 summary["adapter_version"] or adapter, summary["results_file"])
    return summary
