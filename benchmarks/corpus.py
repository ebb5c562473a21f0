"""The audio a benchmark runs on: speechocean762-mini beside the checkout when present, else synthetic."""

from __future__ import annotations

from pathlib import Path

from vernacular.data.corpus import SyntheticCorpusSettings, build_synthetic_corpus

REPO = Path(__file__).resolve().parents[1]
SPEECHOCEAN_TRAIN = REPO.parent / "shared" / "data" / "speechocean762-mini" / "train"


def benchmark_corpus(data: str, n: int, work_dir: Path, progress: bool = False) -> tuple[Path, str]:
    """(a manifest or corpus folder, a description) for `data`: `auto`, `synthetic` or a corpus path."""
    if data == "auto":
        data = str(SPEECHOCEAN_TRAIN) if SPEECHOCEAN_TRAIN.is_dir() else "synthetic"
    if data == "synthetic":
        settings = SyntheticCorpusSettings(sentences="radiology", heldout_voices=[], max_sentences=n,
                                           validation_fraction=0.0, test_fraction=0.0)
        return (build_synthetic_corpus(settings, Path(work_dir) / "synthetic", progress=progress),
                "synthetic espeak-ng radiology sentences")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark data not found; pass --data synthetic or a corpus folder "
                                "or manifest")
    return path, f"{path.name} ({path}, real speech)"
