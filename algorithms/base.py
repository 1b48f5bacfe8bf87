"""Shared base of GeoSeg Processing algorithms: naming, help, and running a core function
with Processing's progress, cancel and logging, turning core errors into messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterNumber,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..core.errors import GeoSegError
from ..core.staging import disk_full_cause, disk_full_error

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


def require_torch(step: str | None = None) -> None:
    """Fail with what is missing and how to install it (not an ImportError traceback).

    `step` is a core.deps.STEPS key; None checks torch, onnx and onnxruntime (every deep-learning step)."""
    from ..core import deps

    missing = deps.missing(("torch", "onnx", "onnxruntime") if step is None else deps.STEPS[step])
    if missing:
        packages = " ".join(deps.BY_MODULE[m].package if m in deps.BY_MODULE else m for m in missing)
        raise QgsProcessingException(
            f"GeoSeg needs {deps.describe_missing(missing)} for this step, and QGIS's Python cannot import "
            f"{'it' if len(missing) == 1 else 'them'}. Install with GeoSeg ▸ Install dependencies… (or the "
            f"button in GeoSeg ▸ Settings…) in the QGIS window, or run `python3 -m pip install {packages}` "
            "with QGIS's Python.")


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

    def checkParameterValues(self, parameters, context):
        """QGIS says only "Incorrect parameter value for X"; for numbers out of range, say the range."""
        ok, message = super().checkParameterValues(parameters, context)
        if ok:
            return ok, message
        for p in self.parameterDefinitions():
            value = parameters.get(p.name())
            if not isinstance(p, QgsProcessingParameterNumber) or value in (None, "") \
                    or p.checkValueIsAcceptable(value, context):
                continue
            spec = "g" if p.dataType() == QgsProcessingParameterNumber.Double else ".0f"
            lo, hi = format(p.minimum(), spec), format(p.maximum(), spec)
            if p.maximum() >= 1e300:
                return False, f"{p.name()} must be at least {lo} (got {value})."
            return False, f"{p.name()} must be between {lo} and {hi} (got {value})."
        return ok, message

    def run_core(self, func: Callable[..., Any], params: Any, feedback: QgsProcessingFeedback) -> Any:
        """Call a core entry point; GeoSegError becomes a QgsProcessingException (one line)."""
        with engine_log_to(feedback):
            try:
                return func(params, progress=lambda f: feedback.setProgress(100.0 * f),
                            cancelled=feedback.isCanceled)
            except GeoSegError as e:
                raise QgsProcessingException(str(e)) from None
            except Exception as e:
                if disk_full_cause(e) is not None:  # where core has no staged writer (training's checkpoints)
                    outputs = self.destinationParameterDefinitions()
                    what = outputs[0].name() if outputs else "Output"
                    raise QgsProcessingException(str(disk_full_error(what, e))) from None
                raise
