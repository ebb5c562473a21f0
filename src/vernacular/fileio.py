"""Atomic writes: a folder is written under a temporary name and renamed into place, so a crash
never leaves a half-written result that a later run would trust."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_directory_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_folder)`, then replace `final` with it (a folder beside it, same file system)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_new_file(path: Path, text: str) -> None:
    """Write `path` atomically; never replace an existing file (FileExistsError instead)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # fails if `path` appeared meanwhile
    finally:
        tmp.unlink()
