"""File I/O every stage shares: atomic writes, content hashes and the (size, mtime) file key.

Writes go to a temporary name in the destination folder and are renamed into place, so a crash
never leaves a half-written result that a later run would trust. This module is the only place
that renames into place (`os.replace`), hashes file contents and reads a file's modification time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

CHUNK = 1 << 20
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class LockedError(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str):
    """Hold an exclusive lock on the file `path` (created if needed) for the `with` block, or raise
    LockedError at once: "another <what> holds <path>" (the kernel frees a lock when its holder dies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # "a": opening leaves the file untouched
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another {what} holds {path}; try again when it ends") from None
        yield


def check_writable(path: str | os.PathLike) -> None:
    """OSError naming `path` unless a file or folder could be created there: the nearest existing
    folder on the way is probed with a real write (permissions, read-only mounts, a file in the way)."""
    target = Path(path)
    # an existing file is replaced by a write beside it; a missing path by creating folders on the way
    folder = target.parent if target.exists() and not target.is_dir() else target
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"{target}: cannot be created: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"{target}: cannot write in {folder}: {exc.strerror}") from exc


def _write_failure(target: Path, exc: BaseException) -> OSError | None:
    """A clear OSError when `exc` (from any writer: soundfile, torch, plain files) came from a full disk
    or a file-size limit; None when it did not."""
    code = getattr(exc, "errno", None)
    if code not in _FULL:
        try:  # writers that hide the errno: probe the folder with a small write of our own
            with tempfile.TemporaryFile(dir=target.parent) as probe:
                probe.write(b"\0" * CHUNK)
                probe.flush()
                os.fsync(probe.fileno())
            return None
        except OSError as probe_exc:
            if probe_exc.errno not in _FULL:
                return None
            code = probe_exc.errno
    free = shutil.disk_usage(target.parent).free
    return OSError(code, f"{target}: cannot write: {os.strerror(code)} (disk full or file-size limit; "
                         f"{free / 2**30:.2f} GiB free on that file system); free space, or point storage.root "
                         f"in conf/ at a larger disk, and run again ({type(exc).__name__}: {exc})")


def _temp_prefix(final: Path) -> str:
    """Temporary names carry the writer's pid, so a later writer can tell abandoned ones (`_clean_abandoned`)."""
    return f".{final.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _clean_abandoned(final: Path) -> None:
    """Remove temporaries of `final` left by writers that died (killed mid-write): nothing else reads them."""
    stem = f".{final.name}.tmp-"
    for path in final.parent.glob(glob.escape(stem) + "*"):
        pid = path.name[len(stem):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def write_directory_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_folder)`, then replace `final` with it (a folder beside it, same file system)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_abandoned(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final)))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and (clear := _write_failure(final, exc)):
            raise clear from exc
        raise
    return final


def apply_umask(folder: Path) -> None:
    """Give `folder` and everything in it the permissions the user's umask asks for.

    mkdtemp makes private (0700) folders and safetensors writes 0600 files; results are meant to be
    read by other accounts (a serving user) as any file the user writes would be.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder = Path(folder)
    folder.chmod((0o777 if folder.is_dir() else 0o666) & ~umask)
    for path in (folder.rglob("*") if folder.is_dir() else ()):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_new_directory(final: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Like `write_directory_atomically`, but `final` must not exist: FileExistsError, before and after."""
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} already exists and Vernacular never overwrites results: choose a new folder "
                              "or remove the old one yourself")
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_abandoned(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final)))
    try:
        write(tmp)
        apply_umask(tmp)
        if final.exists():
            raise FileExistsError(f"{final} appeared while it was being written; nothing was saved")
        os.rename(tmp, final)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if clear := _write_failure(final, exc):
            raise clear from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_file_atomically(final: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` for a temporary file beside `final`, then rename it over `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_abandoned(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=_temp_prefix(final))
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, final)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and (clear := _write_failure(final, exc)):
            raise clear from exc
        raise
    return final


def write_text_atomically(final: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_file_atomically(final, lambda tmp: tmp.write_text(text, encoding=encoding))


def write_new_file(path: Path, text: str) -> None:
    """Write `path` atomically; never replace an existing file (FileExistsError instead)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # fails if `path` appeared meanwhile
    finally:
        tmp.unlink()


def new_digest(text: str | bytes = b""):
    """A SHA-256 digest object, optionally fed `text` first."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text)


def sha256_text(text: str) -> str:
    return new_digest(text).hexdigest()


def update_with_file(digest, path: str | os.PathLike) -> None:
    """Feed the contents of `path` into `digest`, in chunks."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    digest = new_digest()
    update_with_file(digest, path)
    return digest.hexdigest()


def update_with_files(digest, folder: Path, patterns: Iterable[str]) -> None:
    """Feed the name and contents of every file of `folder` matching `patterns` (sorted) into `digest`."""
    for pattern in patterns:
        for path in sorted(Path(folder).glob(pattern)):
            digest.update(path.name.encode())
            update_with_file(digest, path)


def file_key(path: str | os.PathLike) -> tuple[int, int]:
    """(size in bytes, modification time in ns): a file counts as unchanged while both are."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def short_id(text: str, length: int = 10) -> str:
    """A stable id of `length` hex digits for a text (SHA-1: utterance ids and cache names, not security)."""
    return hashlib.sha1(text.encode()).hexdigest()[:length]


# Remote storage (fsspec: s3://, gs://, abfs://, memory://, ...). Local paths keep the atomic
# writes above; object stores make each uploaded object appear whole.

def filesystem_for(filepath: str, credentials: dict | None = None, fs_args: dict | None = None):
    """(fsspec filesystem, protocol, path without protocol) for a catalog path, as kedro-datasets does."""
    import fsspec
    from kedro.io.core import get_protocol_and_path

    protocol, path = get_protocol_and_path(str(filepath))
    return fsspec.filesystem(protocol, **(credentials or {}), **(fs_args or {})), protocol, path


def is_local(protocol: str) -> bool:
    return protocol in ("file", "local")


def remote_url(protocol: str, path: str) -> str:
    return path if is_local(protocol) else f"{protocol}://{path}"


def upload_new_directory(fs, protocol: str, final: str, write: Callable[[Path], None]) -> str:
    """Write a folder locally with `write(tmp)`, then upload it to `final` (which must not exist)."""
    if fs.exists(final):
        raise FileExistsError(f"{remote_url(protocol, final)} already exists and Vernacular never overwrites results")
    with tempfile.TemporaryDirectory(prefix="vernacular-upload-") as tmp:
        write(Path(tmp))
        for file in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            fs.put_file(str(file), f"{final}/{file.relative_to(tmp).as_posix()}")
    return final


def download_directory(fs, protocol: str, remote: str, cache_root: str | os.PathLike) -> Path:
    """A local copy of a remote folder under `cache_root/<protocol>/<path>` (reused when complete)."""
    local = Path(cache_root) / protocol / remote.lstrip("/")
    if (local / ".complete").is_file():
        return local

    def fetch(tmp: Path) -> None:
        prefix = remote.strip("/")
        for name in fs.find(remote):
            relative = name.lstrip("/")[len(prefix):].lstrip("/")  # find() may add or drop a leading "/"
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(tmp / relative))
        (tmp / ".complete").write_text(remote_url(protocol, remote) + "\n")

    shutil.rmtree(local, ignore_errors=True)  # an incomplete copy from an earlier crash
    return write_new_directory(local, fetch)


def download_file(fs, protocol: str, remote: str, cache_root: str | os.PathLike) -> Path:
    """A local copy of a remote file under `cache_root/<protocol>/<path>` (reused when the size matches)."""
    local = Path(cache_root) / protocol / remote.lstrip("/")
    size = fs.size(remote)
    if local.is_file() and local.stat().st_size == size:
        return local
    return write_file_atomically(local, lambda tmp: fs.get_file(remote, str(tmp)))
