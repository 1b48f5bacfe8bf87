"""Shared base of GeoSeg Processing algorithms: naming, help, and running a core function
with Processing's progress, cancel and logging, turning core errors into messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtCore import QCoreApplication

from ..core.errors import GeoSegError

LOG = logging.getLogger("geoseg")


class _FeedbackHandler(logging.Handler):
    """Routes the engine's log records into the Processing log while an algorithm runs."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        super().__init__(logging.INFO)
        self.feedback = feedback

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.feedback.pushWarning(msg)
        else:
            self.feedback.pushInfo(msg)


@contextmanager
def engine_log_to(feedback: QgsProcessingFeedback) -> Iterator[None]:
    handler = _FeedbackHandler(feedback)
    old_level = LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(min(old_level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(old_level)


def require_torch() -> None:
    """Fail with an install hint (not an ImportError traceback) when torch or onnx is missing."""
    import importlib.util

    missing = [m for m in ("torch", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise QgsProcessingException(
            f"GeoSeg needs {', '.join(missing)} for this step, and this Python cannot import it. Install it "
            f"into QGIS's Python, e.g. `python3 -m pip install {' '.join(missing)}`.")


def advanced(alg: QgsProcessingAlgorithm, params: list) -> None:
    """Add parameters under the dialog's "Advanced parameters" fold."""
    for p in params:
        p.setFlags(p.flags() | p.FlagAdvanced)
        alg.addParameter(p)


class GeoSegAlgorithm(QgsProcessingAlgorithm):
    """Subclasses set `_name`, `_display`, `_group`, `_help` and implement the two hooks."""

    _name = ""
    _display = ""
    _group = "Deep learning"
    _help = ""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("GeoSeg", text)

    def createInstance(self):
        return type(self)()

    def name(self) -> str:
        return self._name

    def displayName(self) -> str:
        return self.tr(self._display)

    def group(self) -> str:
        return self.tr(self._group)

    def groupId(self) -> str:
        return "deeplearning"

    def shortHelpString(self) -> str:
        return self.tr(self._help)

    def run_core(self, func: Callable[..., Any], params: Any, feedback: QgsProcessingFeedback) -> Any:
        """Call a core entry point; GeoSegError becomes a QgsProcessingException (one line)."""
        with engine_log_to(feedback):
            try:
                return func(params, progress=lambda f: feedback.setProgress(100.0 * f),
                            cancelled=feedback.isCanceled)
            except GeoSegError as e:
                raise QgsProcessingException(str(e)) from None
