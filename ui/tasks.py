"""QgsTask wrapper for core entry points (Deepness/BaseTask discipline).

`run()` executes the core function on a worker thread, catching every exception into
`self.error`; progress doubles as a cancel point. GUI work happens only in `finished()`,
on the main thread, through the callbacks.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from qgis.core import QgsTask

from ..core.errors import Cancelled, GeoSegError

LOG = logging.getLogger("geoseg")


class CoreTask(QgsTask):
    def __init__(
        self,
        description: str,
        func: Callable[..., Any],
        params: Any,
        on_success: Callable[[Any], None],
        on_error: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        """`kwargs` go to the core function too (e.g. training's `report` callback, which runs on
        the worker thread: it must only emit Qt signals)."""
        super().__init__(description, QgsTask.CanCancel)
        self.func = func
        self.params = params
        self.kwargs = kwargs
        self.on_success = on_success
        self.on_error = on_error
        self.result: Any = None
        self.error: str | None = None
        self.error_param: str | None = None  # the parameter a GeoSegError names (the dialog marks its field)

    def run(self) -> bool:
        try:
            self.result = self.func(
                self.params, progress=lambda f: self.setProgress(100.0 * f), cancelled=self.isCanceled, **self.kwargs
            )
            return True
        except GeoSegError as e:  # Cancelled included: its message says nothing was written
            self.error, self.error_param = str(e), e.param
        except Exception as e:  # noqa: BLE001  (a worker must never raise into QGIS)
            self.error = f"Unexpected error: {e}"
            LOG.error("%s failed:\n%s", self.description(), traceback.format_exc())
        return False

    def finished(self, ok: bool) -> None:
        if ok:
            self.on_success(self.result)
        else:
            self.on_error(self.error or str(Cancelled()))
