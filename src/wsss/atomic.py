"""Atomic output files: written to a temporary sibling, renamed onto the target when complete.

Temporary files are created with mode 0666 and the process's umask applied by the kernel, as a
plain `open()` would create them, so results are readable by whoever can read the folder (not
0600 as with `tempfile.mkstemp`). A write that fails because the disk is full, a quota is used
up or the folder is read-only raises `WriteError`: one line naming the target and the OS reason;
the temporary file is removed and the previous target, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# failures of a write under way: the file system, not the data, is the cause
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
# torch.save to a path reports a full disk without errno; these name its failed stream writes,
# and HDF5's own failed writes
_WRITE_FAILED = re.compile(r"PytorchStreamWriter|inline_container|iostream error|"
                           r"file write failed")
_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_HDF5_FILE = re.compile(r"filename = '([^']*)'")
_TOKEN = "[a-z0-9_]{8}"  # ours (hex) and tempfile.mkstemp's, left by earlier versions


class WriteError(OSError):
    """An output could not be written (full disk, quota, read-only or unwritable folder).

    `errno` is the OS error, `filename` the target, `strerror` the whole explanation: the
    message is `<filename>: <strerror>`, one line."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def temp_name(path: Path, suffix: str = "") -> re.Pattern[str]:
    """The names of `path`'s temporary files: `.<name>.<8 characters><suffix>.tmp`."""
    return re.compile(rf"\.{re.escape(path.name)}\.{_TOKEN}{re.escape(suffix)}\.tmp")


def create_temp(path: str | os.PathLike, suffix: str = "") -> tuple[int, Path]:
    """Create a new empty temporary file beside `path`; return (open fd, its path).

    Mode 0666 with the umask applied, atomically by the kernel (no process-wide umask call)."""
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def remove_stale_temps(path: Path, suffix: str = "") -> list[Path]:
    """Remove temporary files of `path` left by killed writers; return those removed.

    Only one job writes a given output (Snakemake), so any temporary file of the same target
    is stale; files of other targets, even with similar names, are left alone."""
    pattern = temp_name(path, suffix)
    removed = []
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [err]
    while todo and len(seen) < 16:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__context__, e.__cause__) if c is not None]


def _about_other_file(e: BaseException, ours: set[str]) -> bool:
    named = getattr(e, "filename", None)
    if named is None:
        found = _HDF5_FILE.search(str(e))
        named = found.group(1) if found else None
    return named is not None and os.path.abspath(named) not in ours


def write_errno(err: BaseException, *paths: Path) -> int | None:
    """The errno of `err` when it is (or was caused by) a failed write of one of `paths`:
    ENOSPC, EDQUOT, EFBIG or EROFS, found as an OSError in its chain, in an HDF5 message, or
    (torch's stream writer gives no errno) from the file system of `paths[0]` being full or
    read-only. None for any other error, and for errors about other files."""
    ours = {os.path.abspath(p) for p in paths}
    chain = [e for e in _chain(err) if not _about_other_file(e, ours)]
    for e in chain:
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return e.errno
        found = _HDF5_ERRNO.search(str(e))
        if found and int(found.group(1)) in _WRITE_ERRNOS:
            return int(found.group(1))
    if paths and any(isinstance(e, OSError | RuntimeError) and _WRITE_FAILED.search(str(e))
                     for e in chain):
        with contextlib.suppress(OSError):
            fs = os.statvfs(paths[0].parent)
            if fs.f_flag & os.ST_RDONLY:
                return errno.EROFS
            if fs.f_bavail == 0:
                return errno.ENOSPC
    return None


def _write_error(path: Path, code: int, folder: bool = False) -> WriteError:
    kept = f", the previous {path.name} is unchanged" if os.path.exists(path) else ""
    if folder:
        what = (f"cannot create files in {path.parent} ({os.strerror(code)}), so it could not "
                f"be written")
    else:
        what = f"could not be written: {os.strerror(code)}"
    return WriteError(code, f"{what}; nothing was written{kept}", str(path))


def release(closable: Any, tmp: Path) -> None:
    """Close a writer's library handle on a temporary file that is being discarded.

    The file is emptied first: on a full disk that frees its space, so the library's final
    flush cannot fail (HDF5 can crash when its flushes fail). Errors of the close are dropped,
    the file is removed anyway."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    with contextlib.suppress(Exception):
        closable.close()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Earlier temporary files of `path` (left by killed jobs) are removed first. The temporary
    file is always removed; a full disk or an unwritable folder raises WriteError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path, suffix)
        fd, tmp = create_temp(path, suffix)
        os.close(fd)
    except OSError as err:
        raise _write_error(path, err.errno or errno.EIO, folder=True) from err
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        code = write_errno(err, tmp, path)
        if code is None:
            raise
        raise _write_error(path, code) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
