"""Kedro datasets for artefacts that are directories (a saved PEFT adapter), report pages, and the
inbox of audio files that the transcribe pipeline reads by path; local or on fsspec storage."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.io.core import AbstractDataset, AbstractVersionedDataset, DatasetError, Version, get_filepath_str
from kedro_datasets.partitions import PartitionedDataset

from vernacular.common.fileio import apply_umask, download_directory, download_file, filesystem_for, is_local, \
    remote_url, upload_new_directory, write_file_atomically, write_new_directory
from vernacular.common.storage import StorageLayout
from vernacular.models.loading import AdapterNotFoundError
from vernacular.settings import CONFIG_LOADER_ARGS


DEFAULT_REMOTE_CACHE = "data/06_models/remote_cache"  # local copies of remote adapters and inbox files


class AdapterDataset(AbstractVersionedDataset[Any, str]):
    """A PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`, plus any
    extra files such as the model card), on the local disk or any fsspec storage (`s3://`,
    `gs://`, `abfs://`, ...; `credentials` and `fs_args` as in kedro-datasets).

    save: takes a PeftModel, or a dict {"model": PeftModel, "files": {name: text}}.
    load: returns a local directory path (load it with `PeftModel.from_pretrained`); a remote
    adapter is downloaded once into `local_cache`. A local save writes a temporary folder and
    renames it into place, so a crash never leaves a half-written adapter; a remote save uploads
    a finished local folder.
    """

    def __init__(self, filepath: str, version: Version | None = None, credentials: dict | None = None,
                 fs_args: dict | None = None, local_cache: str = DEFAULT_REMOTE_CACHE,
                 metadata: dict | None = None) -> None:
        self._fs, self._protocol, path = filesystem_for(filepath, credentials, fs_args)
        self._local_cache = local_cache
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists,
                         glob_function=self._fs.glob)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol, "version": self._version}

    def _full(self, path) -> str:
        return get_filepath_str(path, self._protocol)

    def load(self) -> str:
        path = self._full(self._get_load_path())
        if not self._fs.isfile(f"{path}/adapter_config.json"):
            raise DatasetError(f"{remote_url(self._protocol, path)}: not a PEFT adapter directory "
                               "(no adapter_config.json)")
        if is_local(self._protocol):
            return str(Path(path).resolve())
        return str(download_directory(self._fs, self._protocol, path, self._local_cache).resolve())

    def save(self, data: Any) -> None:
        model, files = (data["model"], data.get("files", {})) if isinstance(data, dict) else (data, {})

        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp))
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")

        path = self._full(self._get_save_path())
        if is_local(self._protocol):
            write_new_directory(path, write)
        else:
            upload_new_directory(self._fs, self._protocol, path, write)
        self._fs.invalidate_cache(self._full(self._filepath))

    def _exists(self) -> bool:
        try:
            path = self._full(self._get_load_path())
        except DatasetError:
            return False
        return self._fs.isfile(f"{path}/adapter_config.json")


class FilePathDataset(AbstractDataset[None, str]):
    """One file handed on by path: load returns a local absolute path and reads nothing (the node
    decodes it and reports files it cannot read). A remote file (fsspec URL) is first copied into
    `local_cache`. Read-only."""

    def __init__(self, filepath: str, credentials: dict | None = None, fs_args: dict | None = None,
                 local_cache: str = DEFAULT_REMOTE_CACHE, metadata: dict | None = None) -> None:
        self._fs, self._protocol, self._path = filesystem_for(filepath, credentials, fs_args)
        self._filepath = filepath
        self._local_cache = local_cache
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol}

    def load(self) -> str:
        if is_local(self._protocol):
            return str(Path(self._path).resolve())
        return str(download_file(self._fs, self._protocol, self._path, self._local_cache).resolve())

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._filepath}: FilePathDataset is read-only")

    def _exists(self) -> bool:
        return self._fs.isfile(self._path)


class InboxDataset(PartitionedDataset):
    """A folder of files as {relative path: loader}, like PartitionedDataset (local or any fsspec
    storage), except that an empty or missing folder loads as {}: a night with no new audio is not
    an error."""

    def load(self) -> dict[str, Any]:
        try:
            return super().load()
        except DatasetError:
            if self._list_partitions():
                raise
            return {}


class ReportPageDataset(AbstractVersionedDataset[str, str]):
    """A text page (HTML or Markdown), versioned like the other reports, on the local disk or any
    fsspec storage.

    save writes a temporary file and renames it into place (locally; an object store shows the
    upload whole), then logs `<label>: <url>` with the version folder Kedro chose, so the run's
    log links to the page.
    """

    def __init__(self, filepath: str, label: str = "report", version: Version | None = None,
                 credentials: dict | None = None, fs_args: dict | None = None, metadata: dict | None = None) -> None:
        self._fs, self._protocol, path = filesystem_for(filepath, credentials, fs_args)
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists,
                         glob_function=self._fs.glob)
        self._label = label
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol, "label": self._label,
                "version": self._version}

    def load(self) -> str:
        with self._fs.open(get_filepath_str(self._get_load_path(), self._protocol), "r", encoding="utf-8") as f:
            return f.read()

    def save(self, data: str) -> None:
        if not isinstance(data, str):
            raise DatasetError(f"{self._filepath}: ReportPageDataset saves text, got {type(data).__name__}")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        if is_local(self._protocol):
            target = write_file_atomically(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
            apply_umask(target)  # mkstemp creates 0600; the page is meant to be read
            link = target.resolve().as_uri()
        else:
            with self._fs.open(path, "w", encoding="utf-8") as f:
                f.write(data)
            link = remote_url(self._protocol, path)
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))
        logging.getLogger(__name__).info("%s: %s", self._label, link)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return self._fs.isfile(get_filepath_str(path, self._protocol))


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
