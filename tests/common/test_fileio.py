from __future__ import annotations

import hashlib
import os

import pytest

from vernacular.common.fileio import (file_key, sha256_file, write_directory_atomically, write_new_directory,
                                      write_text_atomically)


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(3 << 20))  # several chunks
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_key_changes_with_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    before = file_key(path)
    path.write_text("three")
    assert file_key(path) != before and file_key(path)[0] == 5


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    final = tmp_path / "out"
    write_directory_atomically(final, lambda tmp: (tmp / "f").write_text("old"))

    def broken(tmp):
        (tmp / "f").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_directory_atomically(final, broken)
    assert (final / "f").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_new_directory_never_overwrites_and_follows_the_umask(tmp_path):
    final = tmp_path / "export"
    old = os.umask(0o022)
    try:
        write_new_directory(final, lambda tmp: (tmp / "w").write_text("x"))
    finally:
        os.umask(old)
    assert (final / "w").stat().st_mode & 0o777 == 0o644 and final.stat().st_mode & 0o777 == 0o755
    with pytest.raises(FileExistsError):
        write_new_directory(final, lambda tmp: None)


def test_text_is_replaced_whole(tmp_path):
    path = tmp_path / "s.json"
    write_text_atomically(path, "a")
    write_text_atomically(path, "b")
    assert path.read_text() == "b" and [p.name for p in tmp_path.iterdir()] == ["s.json"]


FULL_DISK_CHILD = r"""
import resource, signal, sys
import numpy as np, torch
from vernacular.common.fileio import write_directory_atomically
from vernacular.data.audio import write_wav
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, writes fail with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
target = sys.argv[1]
for name, write in [("wav", lambda: write_wav(target + "/big.wav", np.zeros(16000 * 20, np.float32))),
                    ("torch", lambda: write_directory_atomically(
                        __import__("pathlib").Path(target) / "ckpt",
                        lambda tmp: torch.save({"w": torch.zeros(200_000)}, tmp / "state.pt")))]:
    try:
        write()
        print(name, "WROTE")
    except OSError as exc:
        print(name, exc)
"""


def test_a_full_disk_names_the_path_and_the_cause(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: both fail writes with the same errnos."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"wav", "torch"}, done.stderr
    assert str(tmp_path / "big.wav") in lines["wav"] and "file-size limit" in lines["wav"]
    assert str(tmp_path / "ckpt") in lines["torch"] and "file-size limit" in lines["torch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-written file or folder left behind


def test_a_held_lock_stops_a_second_holder(tmp_path):
    from vernacular.common.fileio import LockedError, exclusive_lock

    with exclusive_lock(tmp_path / "v.lock", "run of v"):
        with pytest.raises(LockedError, match="another run of v holds"):
            with exclusive_lock(tmp_path / "v.lock", "run of v"):
                pass
    with exclusive_lock(tmp_path / "v.lock", "x"):  # free again
        pass


def test_a_dead_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    child = ("import os, sys\nfrom pathlib import Path\nfrom vernacular.common.fileio import write_directory_atomically"
             "\nwrite_directory_atomically(Path(sys.argv[1]), lambda tmp: os._exit(9))")  # dies mid-write
    assert subprocess.run([sys.executable, "-c", child, str(tmp_path / "entry")]).returncode == 9
    (left,) = [p for p in tmp_path.iterdir()]
    assert left.name.startswith(".entry.tmp-")
    live = tmp_path / f".entry.tmp-{os.getpid()}-x"  # a writer that is still running keeps its temporary
    live.mkdir()
    write_directory_atomically(tmp_path / "entry", lambda tmp: (tmp / "f").write_text("ok"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "entry"]


def test_check_writable_accepts_existing_files_and_new_paths_and_names_a_file_in_the_way(tmp_path):
    from vernacular.common.fileio import check_writable

    (tmp_path / "existing.csv").write_text("x")
    check_writable(tmp_path / "existing.csv")  # an unversioned output that a rerun replaces
    check_writable(tmp_path / "new" / "deeper" / "out.json")
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OSError, match="blocker is a file, not a folder"):
        check_writable(tmp_path / "blocker" / "out.json")
