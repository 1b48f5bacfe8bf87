"""Write-then-rename helpers: a result appears complete or not at all, never half-written,
and nothing the user already had is overwritten."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from .errors import GeoSegError, first_line

log = logging.getLogger("geoseg")

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


PARTIAL = ".partial-"  # every partial output is ".NAME.partial-XXXX" beside NAME (+ NAME's extension for files)


def partial_prefix(target: str) -> str:
    """How the names of `target`'s partial files and folders begin (one convention, one cleanup)."""
    return f".{os.path.basename(os.path.abspath(target))}{PARTIAL}"


def check_new_file(path: str, what: str, param: str | None = None) -> None:
    """Refuse to overwrite an existing file; `param`: the Processing name the error is about."""
    if os.path.exists(path):
        raise GeoSegError(
            f"{what}: {path} already exists. GeoSeg never overwrites existing "
            "output; choose a new file name or delete the old file first.",
            param=param,
        )


def check_new_dir(target: str, what: str, param: str | None = None) -> None:
    """Refuse a folder output that exists as a file or holds anything (a new or empty folder is fine)."""
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise GeoSegError(f"{what}: {target} exists and is a file; choose a folder.", param=param)
        if os.listdir(target):
            raise GeoSegError(
                f"{what}: {target} is not empty. GeoSeg never overwrites existing "
                "output; choose a new or empty folder.",
                param=param,
            )


@contextmanager
def staged_path(target: str, what: str, *, folder: bool = False, replace: bool = False) -> Iterator[str]:
    """Yield a hidden partial path beside `target` (missing parents are created) for a writer to
    create; on success it is renamed to `target`. On any error (or cancel) the partial file or
    folder, and the parents created for it, are removed, and a full disk gets its one message.

    A file keeps `target`'s extension (GDAL, OGR and ONNX writers go by it). `folder`: a folder, and
    `target` must not exist or be an empty folder. Otherwise `target` must not exist, unless
    `replace`: then an existing file is replaced atomically (the old one stays whole until then).
    """
    target = os.path.abspath(target)
    if folder:
        check_new_dir(target, what)
    elif not replace:
        check_new_file(target, what)
    parent, created = _writable_parent(target, what)
    try:
        if folder:
            tmp = tempfile.mkdtemp(prefix=partial_prefix(target), dir=parent)
        else:
            fd, tmp = tempfile.mkstemp(prefix=partial_prefix(target), suffix=os.path.splitext(target)[1], dir=parent)
            os.close(fd)
            os.remove(tmp)  # the name is reserved; writers (GDAL/OGR, torch, onnx) create the file themselves
    except OSError as e:
        _remove_created(created)
        raise GeoSegError(f"{what}: cannot write in {parent}: {e.strerror}.") from None
    try:
        yield tmp
        if folder:
            if os.path.isdir(target):
                os.rmdir(target)  # empty, checked above
            os.rename(tmp, target)
        elif replace:
            os.replace(tmp, target)
        else:
            check_new_file(target, what)
            os.rename(tmp, target)
    except BaseException as e:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        _remove_created(created)
        raise_if_disk_full(what, e)
        raise


@contextmanager
def staged_dir(target: str, what: str) -> Iterator[str]:
    """Yield a hidden sibling folder to fill; on success it becomes `target` (see `staged_path`)."""
    with staged_path(target, what, folder=True) as tmp:
        yield tmp


@contextmanager
def staged_file(target: str, what: str) -> Iterator[str]:
    """Yield a temporary path beside `target` (same extension); renamed on success, never overwriting."""
    with staged_path(target, what) as tmp:
        yield tmp


@contextmanager
def atomic_write(path: str, mode: str = "wb", what: str = "OUTPUT_MODEL", **kw: Any) -> Iterator[IO]:
    """Open a partial file beside `path`; on success flush it to disk (fsync), rename it over `path`
    and sync the folder. A crash or kill at any moment leaves either the old complete file or the
    new complete one, never a truncated mix; an error removes the partial file."""
    with staged_path(path, what, replace=True) as tmp:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    _sync_folder(os.path.dirname(os.path.abspath(path)))


def _sync_folder(folder: str) -> None:
    """Make a rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_partials(path: str, before: float | None = None) -> list[str]:
    """Remove the partial files and folders a killed writer of `path` left behind (a SIGKILL, a
    power cut: nothing could clean up then); return their names. `before`: only those last changed
    before that time (`time.time()` at the start of the run), so a partial of a run writing the same
    name right now is left alone."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    prefix = partial_prefix(path)
    removed: list[str] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # no folder yet: nothing was left there
        return removed
    for name in names:
        full = os.path.join(folder, name)
        if not name.startswith(prefix):
            continue
        try:
            if before is not None and os.lstat(full).st_mtime >= before:
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
        except OSError:
            continue  # not ours to remove (permissions), or gone already
        removed.append(name)
    return removed


def remove_stale_outputs(targets: Iterable[str | None], before: float) -> list[str]:
    """Every run, before it writes: remove the stale partials of each of its outputs (`targets`;
    None: an output not asked for) older than the run, logging what was removed."""
    removed = []
    for target in targets:
        if target:
            for name in remove_stale_partials(target, before):
                log.info("Removed %s, left behind by an interrupted run.", name)
                removed.append(name)
    return removed
