"""Paths the tests share: the checkout and the `shared/` data folder beside it (may be absent)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def scratch_project(root: Path) -> Path:
    """A copy of the project's configuration in `root` (no conf/local, no data) that Kedro can run;
    the package itself is the installed one."""
    import shutil

    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()  # bootstrap_project checks that it exists
    return root
