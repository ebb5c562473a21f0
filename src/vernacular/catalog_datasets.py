"""Kedro datasets for artefacts that are directories (a saved PEFT adapter) and for the inbox of
audio files that the transcribe pipeline reads by path."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.io.core import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro_datasets.partitions import PartitionedDataset

from vernacular.common.fileio import apply_umask, write_file_atomically, write_new_directory
from vernacular.common.storage import StorageLayout
from vernacular.models.loading import AdapterNotFoundError
from vernacular.settings import CONFIG_LOADER_ARGS


class AdapterDataset(AbstractVersionedDataset[Any, str]):
    """A PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`, plus any
    extra files such as an adapter card).

    save: takes a PeftModel, or a dict {"model": PeftModel, "files": {name: text}}.
    load: returns the directory path as a string (load it with `PeftModel.from_pretrained`).
    Saving writes to a temporary folder and renames it into place, so a crash never leaves a
    half-written adapter.
    """

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict | None = None) -> None:
        super().__init__(filepath=PurePosixPath(filepath), version=version, exists_function=os.path.exists,
                         glob_function=lambda pattern: sorted(glob.glob(pattern)))
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

    def load(self) -> str:
        path = Path(self._get_load_path())
        if not (path / "adapter_config.json").is_file():
            raise DatasetError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
        return str(path.resolve())

    def save(self, data: Any) -> None:
        model, files = (data["model"], data.get("files", {})) if isinstance(data, dict) else (data, {})
        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp))
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")

        write_new_directory(self._get_save_path(), write)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return (Path(path) / "adapter_config.json").is_file()


class FilePathDataset(AbstractDataset[None, str]):
    """One file handed on by path: load returns the absolute path and reads nothing (the node
    decodes it and reports files it cannot read). Read-only."""

    def __init__(self, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def load(self) -> str:
        return str(self._filepath.resolve())

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._filepath}: FilePathDataset is read-only")

    def _exists(self) -> bool:
        return self._filepath.is_file()


class InboxDataset(PartitionedDataset):
    """A folder of files as {relative path: loader}, like PartitionedDataset, except that an empty
    or missing folder loads as {}: a night with no new audio is not an error."""

    def load(self) -> dict[str, Any]:
        try:
            return super().load()
        except DatasetError:
            if self._list_partitions():
                raise
            return {}


class ReportPageDataset(AbstractVersionedDataset[str, str]):
    """A text page (HTML or Markdown) on the local disk, versioned like the other reports.

    save writes a temporary file and renames it into place, then logs `<label>: file:///abs/path`
    with the version folder Kedro chose, so the run's log links to the page.
    """

    def __init__(self, filepath: str, label: str = "report", version: Version | None = None,
                 metadata: dict | None = None) -> None:
        super().__init__(filepath=PurePosixPath(filepath), version=version, exists_function=os.path.exists,
                         glob_function=lambda pattern: sorted(glob.glob(pattern)))
        self._label = label
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "label": self._label, "version": self._version}

    def load(self) -> str:
        return Path(self._get_load_path()).read_text(encoding="utf-8")

    def save(self, data: str) -> None:
        if not isinstance(data, str):
            raise DatasetError(f"{self._filepath}: ReportPageDataset saves text, got {type(data).__name__}")
        target = write_file_atomically(self._get_save_path(), lambda tmp: tmp.write_text(data, encoding="utf-8"))
        apply_umask(target)  # mkstemp creates 0600; the page is meant to be read
        logging.getLogger(__name__).info("%s: %s", self._label, target.resolve().as_uri())

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return Path(path).is_file()


class ProjectCatalog:
    """The project's catalog and parameters as `kedro run --env ENV` sees them, read from ./conf.

    For the commands that use a trained adapter outside a Kedro run (`vernacular transcribe`,
    `vernacular export`): they find the adapter and its base model through the catalog, never
    through paths of their own. No Kedro session is started (its logging setup writes to stdout).
    """

    def __init__(self, env: str | None = None, project_dir: str | Path = "."):
        conf = Path(project_dir) / "conf"
        if not conf.is_dir():
            raise FileNotFoundError(f"{conf.resolve()}: no Kedro configuration here; run the command from the "
                                    "project folder, or pass --adapter and --base-model")
        loader = OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, **({"default_run_env": env} if env else {})})
        self.catalog = DataCatalog.from_config(loader["catalog"])
        self.parameters = loader["parameters"]

    def latest_adapter(self, vertical: str) -> str:
        """The newest saved version of `<vertical>.adapter`."""
        name = f"{vertical}.adapter"
        try:
            return self.catalog.load(name)
        except DatasetError as exc:
            raise AdapterNotFoundError(f"no trained adapter in the catalog entry {name} ({exc}): run "
                                       f"`kedro run --pipeline={vertical}` first (or pass --adapter PATH)") from exc

    def base_model(self, vertical: str) -> dict | None:
        """The base model the vertical's last features run resolved (`<vertical>.base_model`), if any."""
        name = f"{vertical}.base_model"
        return self.catalog.load(name) if self.catalog.exists(name) else None

    def storage(self, vertical: str) -> StorageLayout:
        return StorageLayout.for_vertical(vertical, (self.parameters.get(vertical) or {}).get("storage"))
