"""Where a vertical's files live: the one place that derives every storage folder.

Catalogued datasets (manifests, adapters, reports) sit where conf/base/catalog.yml puts them:
`data/<layer>/<storage name>/...`. The caches and working folders that are not catalog entries
(synthetic audio, 16 kHz copies, features, checkpoints, evaluation cache, control audio,
transcription runs) are derived here from the same storage name, which is the vertical's name plus
the environment's `storage_suffix` (conf/<env>/globals.yml), so a run under `--env speechocean`
keeps all its files under `accent-speechocean`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vernacular.common.config import build_settings


@dataclass
class StorageSettings:
    """`params:<vertical>.storage`: the data root and the environment's suffix to the vertical's name."""

    root: str = "data"
    suffix: str = ""

    @classmethod
    def from_dict(cls, values: dict | None) -> "StorageSettings":
        return build_settings(cls, values, "storage")


@dataclass(frozen=True)
class StorageLayout:
    root: Path
    name: str  # the vertical's storage name: `radiology`, `accent-speechocean`, ...

    @classmethod
    def for_vertical(cls, vertical: str, storage: StorageSettings | dict | None = None) -> "StorageLayout":
        settings = StorageSettings.from_dict(storage) if not isinstance(storage, StorageSettings) else storage
        return cls(Path(settings.root), f"{vertical}{settings.suffix}")

    def _layer(self, layer: str) -> Path:
        return self.root / layer / self.name

    @property
    def run_lock(self) -> Path:
        """Held by a `kedro run` of the vertical for its whole run, so two runs never share files."""
        return self.root / ".locks" / f"{self.name}.lock"

    @property
    def synthetic_dir(self) -> Path:
        return self._layer("01_raw") / "synthetic"

    @property
    def control_dir(self) -> Path:
        """Audio of the synthetic forgetting control set."""
        return self._layer("01_raw") / "control"

    @property
    def unseen_voice_dir(self) -> Path:
        """Audio of the test sentences read by the unseen synthesiser (Kokoro)."""
        return self._layer("01_raw") / "unseen_voices"

    @property
    def clean_audio_dir(self) -> Path:
        return self._layer("02_intermediate") / "audio"

    @property
    def feature_cache_dir(self) -> Path:
        return self._layer("04_feature") / "cache"

    @property
    def checkpoint_dir(self) -> Path:
        return self._layer("06_models") / "checkpoints"

    @property
    def base_model_cache_dir(self) -> Path:
        """Converted embedded base models, shared by every vertical."""
        return self.root / "06_models" / "base"

    @property
    def ct2_cache_dir(self) -> Path:
        """CTranslate2 exports of the merged adapter for serving, one per adapter version and weight type."""
        return self._layer("06_models") / "ct2"

    @property
    def evaluation_cache_dir(self) -> Path:
        return self._layer("07_model_output") / "evaluation_cache"

    @property
    def transcriptions_dir(self) -> Path:
        return self._layer("07_model_output") / "transcriptions"


def version_of(path: str | os.PathLike | None) -> str | None:
    """The version of a file inside a versioned dataset folder (`.../<name>/<version>/<name>`), else None."""
    if not path:
        return None
    path = Path(path)
    return path.parent.name if path.parent.parent.name == path.name else None


def portable_path(path: str | os.PathLike) -> str:
    """`path` as written into manifests and indexes: relative to the project folder (the working
    directory of a Kedro run, the base of the catalog's own relative paths) when it lies inside
    it, so the project with its data/ can move; absolute otherwise (a corpus kept elsewhere)."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(absolute)
