"""GDAL/OGR/OSR exceptions for GeoSeg's own calls only.

Core code is written against exceptions (`gdal.Open` raises instead of returning None). Inside
QGIS the Python process and its GDAL bindings are shared with QGIS and every other plugin, so
GeoSeg never switches exceptions on at import: each entry point runs under
`gdal_exceptions()` (or the `with_gdal_exceptions` decorator), which restores the previous
state when the call ends, also when it fails.

- GDAL ≥ 3.7: each module's `ExceptionMgr` is used. Its state is per thread, so only the
  thread running GeoSeg's call sees exceptions; worker threads that call GDAL enter the scope
  themselves (the chip writers, the prediction pipeline's stages).
- GDAL < 3.7 (Debian bookworm's 3.6.2): `UseExceptions()` is the only switch, and it is
  process-wide (one flag per module, gdal, ogr and osr separately, shared by every thread, and
  it swaps GDAL's global error handler). So while any GeoSeg call runs, exceptions are on for
  the whole process; the first GeoSeg call to enter switches on the modules that were off, the
  last to leave switches exactly those off again, in reverse order. The count is kept under a
  lock, so concurrent GeoSeg runs (two QgsTasks, reader/writer threads) never switch
  exceptions off under each other. A module that was already on is left alone. If someone else
  switched exceptions on for a module after GeoSeg did, GDAL 3.6 refuses to switch GeoSeg's
  off out of order; that is logged and the state is left on rather than breaking theirs.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TypeVar

from osgeo import gdal, ogr, osr

log = logging.getLogger("geoseg")

MODULES = (gdal, ogr, osr)
HAS_EXCEPTION_MGR = all(hasattr(m, "ExceptionMgr") for m in MODULES)  # GDAL ≥ 3.7

_lock = threading.Lock()
_depth = 0  # GeoSeg calls (in any thread) now inside gdal_exceptions(), GDAL < 3.7 only
_switched_on: list = []  # modules the first of them switched on; the last switches them off

F = TypeVar("F", bound=Callable)


def state() -> tuple[int, int, int]:
    """GetUseExceptions() of gdal, ogr and osr (as the calling thread sees them)."""
    return tuple(m.GetUseExceptions() for m in MODULES)


def _enter() -> None:
    global _depth
    with _lock:
        if _depth == 0:
            _switched_on[:] = [m for m in MODULES if not m.GetUseExceptions()]
            for m in _switched_on:
                m.UseExceptions()
        _depth += 1


def _leave() -> None:
    global _depth
    with _lock:
        _depth -= 1
        if _depth:
            return
        for m in reversed(_switched_on):  # GDAL 3.6 keeps a stack of error handlers: undo in reverse
            try:
                m.DontUseExceptions()
            except RuntimeError as e:
                log.warning("Could not restore %s's exception mode (%s); it stays on.", m.__name__, e)
        _switched_on.clear()


@contextmanager
def gdal_exceptions() -> Iterator[None]:
    """gdal, ogr and osr raise exceptions inside the block; the previous state comes back after.

    Nested and concurrent use is fine. See the module's docstring for GDAL < 3.7, where the
    switch is process-wide while any GeoSeg call runs."""
    if HAS_EXCEPTION_MGR:
        with ExitStack() as stack:
            for m in MODULES:
                stack.enter_context(m.ExceptionMgr(useExceptions=True))
            yield
        return
    _enter()
    try:
        yield
    finally:
        _leave()


def with_gdal_exceptions(fn: F) -> F:
    """Decorator: the whole call runs under `gdal_exceptions()` (core entry points)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with gdal_exceptions():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
