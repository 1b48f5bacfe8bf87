"""Write-then-rename helpers: a result appears complete or not at all, never half-written,
and nothing the user already had is overwritten."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import GeoSegError, first_line

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
DISK_FULL_TEXT = ("No space left on device", "File too large", "Disk quota exceeded")  # as GDAL and torch word them


def disk_full_cause(e: BaseException | None) -> BaseException | None:
    """`e`, or the error it arose from, that is the system refusing a write for lack of space (or a
    file-size limit); None when there is none. GDAL reports these as text inside its own errors."""
    for _ in range(10):
        if e is None:
            return None
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if any(t in str(e) for t in DISK_FULL_TEXT):
            return e
        e = e.__cause__ or e.__context__
    return None


FULL = "The disk is full, or a file-size limit was reached; nothing was kept. Free some space and run again."


def disk_full_error(what: str, e: BaseException) -> GeoSegError:
    """The one message for a write that ran out of space; the callers have removed what was written."""
    e = disk_full_cause(e) or e
    if isinstance(e, GeoSegError):  # already says what failed
        return GeoSegError(f"{str(e).rstrip()} {FULL}")
    detail = first_line(e)
    return GeoSegError(f"{what}: writing failed ({detail}). {FULL}")


def raise_if_disk_full(what: str, e: BaseException) -> None:
    """Turn a write that ran out of space into the one disk-full message (once); else do nothing."""
    if disk_full_cause(e) is not None and FULL not in str(e):
        raise disk_full_error(what, e) from None


def _writable_parent(path: str, what: str) -> tuple[str, list[str]]:
    """Create the missing parents of `path`; return (parent, folders created)."""
    parent = os.path.dirname(os.path.abspath(path))
    created: list[str] = []
    probe = parent
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise GeoSegError(f"{what}: cannot create {path}: {probe} is a file, not a folder.")
    try:
        for d in reversed(created):
            os.mkdir(d)
    except OSError as e:
        _remove_created(created)
        raise GeoSegError(f"{what}: cannot create folder {e.filename or parent}: {e.strerror}.") from None
    return parent, created


def _remove_created(created: list[str]) -> None:
    for d in created:  # deepest first
        try:
            os.rmdir(d)
        except OSError:
            pass


@contextmanager
def staged_dir(target: str, what: str) -> Iterator[str]:
    """Yield a hidden sibling folder to fill; on success it becomes `target`.

    `target` must not exist or be an empty folder. On any error (or cancel) the staging
    folder and any parents created for it are removed.
    """
    target = os.path.abspath(target)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise GeoSegError(f"{what}: {target} exists and is a file; choose a folder.")
        if os.listdir(target):
            raise GeoSegError(f"{what}: {target} is not empty. GeoSeg never overwrites existing "
                              "output; choose a new or empty folder.")
    parent, created = _writable_parent(target, what)
    try:
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-", dir=parent)
    except OSError as e:
        _remove_created(created)
        raise GeoSegError(f"{what}: cannot write in {parent}: {e.strerror}.") from None
    try:
        yield staging
        if os.path.isdir(target):
            os.rmdir(target)  # empty, checked above
        os.rename(staging, target)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        raise_if_disk_full(what, e)
        raise


def check_new_file(path: str, what: str) -> None:
    """Refuse to overwrite an existing file."""
    if os.path.exists(path):
        raise GeoSegError(f"{what}: {path} already exists. GeoSeg never overwrites existing "
                          "output; choose a new file name or delete the old file first.")


@contextmanager
def staged_file(target: str, what: str) -> Iterator[str]:
    """Yield a temporary path beside `target` (same extension); renamed on success."""
    target = os.path.abspath(target)
    check_new_file(target, what)
    parent, created = _writable_parent(target, what)
    stem, ext = os.path.splitext(os.path.basename(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.partial-", suffix=ext, dir=parent)
    except OSError as e:
        _remove_created(created)
        raise GeoSegError(f"{what}: cannot write in {parent}: {e.strerror}.") from None
    os.close(fd)
    os.remove(tmp)  # writers (GDAL/OGR) want to create the file themselves
    try:
        yield tmp
        check_new_file(target, what)
        os.rename(tmp, target)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        _remove_created(created)
        raise_if_disk_full(what, e)
        raise
