"""Shared base of GeoSeg Processing algorithms: naming, help, and running a core function
with Processing's progress, cancel and logging, turning core errors into messages."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..adapter.layers import raster_path, vector_uri
from ..core.errors import Cancelled, GeoSegError
from ..core.params import Spec, parse_json_object, schema
from ..core.signals import cancel_on_signals
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


def require_torch() -> None:
    """Fail with what is missing and how to install it (not an ImportError traceback): torch, onnx
    and onnxruntime, which every deep-learning step needs."""
    from ..core import deps

    missing = deps.missing(("torch", "onnx", "onnxruntime"))
    if missing:
        packages = " ".join(deps.BY_MODULE[m].package if m in deps.BY_MODULE else m for m in missing)
        raise QgsProcessingException(
            f"GeoSeg needs {deps.describe_missing(missing)} for this step, and QGIS's Python cannot import "
            f"{'it' if len(missing) == 1 else 'them'}. Install with GeoSeg ▸ Install dependencies… (or the "
            f"button in GeoSeg ▸ Settings…) in the QGIS window, or run `python3 -m pip install {packages}` "
            "with QGIS's Python."
        )


def advanced(alg: QgsProcessingAlgorithm, params: list) -> None:
    """Add parameters under the dialog's "Advanced parameters" fold."""
    for p in params:
        p.setFlags(p.flags() | p.FlagAdvanced)
        alg.addParameter(p)


# ------------------------------------------------------------------ parameters from core's schema (core.params)
_NUMBER = {"int": QgsProcessingParameterNumber.Integer, "float": QgsProcessingParameterNumber.Double}


# Complexity kept: one branch per kind of Processing parameter (number, enum, file, layer, ...), read top to
# bottom as a table.
def parameter_from_spec(s: Spec, tr: Callable[[str], str] = str) -> QgsProcessingParameterDefinition:  # noqa: C901, PLR0912
    """The Processing parameter of one schema field: name, description, default, range, choices, flags."""
    m, label = s.meta, tr(s.meta.label)
    optional = s.optional
    default = None if s.required else s.default
    if s.kind in _NUMBER:
        kw = {} if m.minimum is None else {"minValue": m.minimum}
        if m.maximum is not None:
            kw["maxValue"] = m.maximum
        p = QgsProcessingParameterNumber(m.name, label, _NUMBER[s.kind], default, optional, **kw)
    elif s.kind == "bool":
        p = QgsProcessingParameterBoolean(m.name, label, default, optional)
    elif s.kind == "enum":
        p = QgsProcessingParameterEnum(m.name, label, list(s.labels), False, s.values.index(default), optional)
    elif s.kind in ("string", "json"):
        p = QgsProcessingParameterString(m.name, label, "" if default in (None, {}) else str(default), False, optional)
    elif s.kind == "extent":
        p = QgsProcessingParameterExtent(m.name, label, None, optional)
    elif s.kind == "raster":
        p = QgsProcessingParameterRasterLayer(m.name, label, None, optional)
    elif s.kind == "vector":
        p = QgsProcessingParameterFeatureSource(m.name, label, [QgsProcessing.TypeVectorAnyGeometry], None, optional)
    elif s.kind == "field":
        p = QgsProcessingParameterField(m.name, label, None, m.parent, optional=optional)
    elif s.kind in ("file", "folder"):
        behavior = QgsProcessingParameterFile.Folder if s.kind == "folder" else QgsProcessingParameterFile.File
        p = QgsProcessingParameterFile(m.name, label, behavior, m.extension, None, optional, m.file_filter)
    elif s.kind == "file_out":
        p = QgsProcessingParameterFileDestination(m.name, label, m.file_filter, None, optional)
    elif s.kind == "folder_out":
        p = QgsProcessingParameterFolderDestination(m.name, label, None, optional)
    elif s.kind == "raster_out":  # an optional output is written only when asked for
        p = QgsProcessingParameterRasterDestination(m.name, label, None, optional, not optional)
    elif s.kind == "vector_out":
        p = QgsProcessingParameterVectorDestination(
            m.name, label, QgsProcessing.TypeVectorPolygon, None, optional, not optional
        )
    else:
        raise ValueError(f"{m.name}: no Processing parameter for kind {s.kind!r}")
    if m.advanced:
        p.setFlags(p.flags() | p.FlagAdvanced)
    if m.help:
        p.setHelp(tr(m.help))
    return p


def add_parameters(alg: QgsProcessingAlgorithm, cls: type) -> None:
    """Add the parameters of a step's dataclass (core.params): the plain ones, then the advanced
    ones (the dialog's fold), then the outputs, each group in field order."""
    specs = schema(cls)
    groups = (
        [s for s in specs if not s.meta.advanced and not s.is_output],
        [s for s in specs if s.meta.advanced and not s.is_output],
        [s for s in specs if s.is_output],
    )
    for group in groups:
        for s in group:
            alg.addParameter(parameter_from_spec(s, alg.tr))


def _json(alg: QgsProcessingAlgorithm, s: Spec, parameters: dict, context) -> dict:
    try:
        return parse_json_object(alg.parameterAsString(parameters, s.name, context), s.name, s.meta.placeholder)
    except GeoSegError as e:
        raise QgsProcessingException(str(e)) from None


def _extent(alg: QgsProcessingAlgorithm, s: Spec, parameters: dict, context) -> str:
    """Core's 'xmin,xmax,ymin,ymax [AUTHID]' from an extent parameter (a string, a layer, a rectangle)."""
    raw = parameters.get(s.name)
    if isinstance(raw, str) and "[" not in raw:
        return raw.strip()  # in the input raster's CRS (core's reading), not the project's
    r = alg.parameterAsExtent(parameters, s.name, context)
    crs = alg.parameterAsExtentCrs(parameters, s.name, context)
    text = f"{r.xMinimum()!r},{r.xMaximum()!r},{r.yMinimum()!r},{r.yMaximum()!r}"
    return f"{text} [{crs.authid()}]" if crs.isValid() and crs.authid() else text


# kind → (alg, spec, parameters, context, feedback) → the dataclass field's value
_GETTERS: dict[str, Callable[..., Any]] = {
    "int": lambda a, s, p, c, f: a.parameterAsInt(p, s.name, c),
    "float": lambda a, s, p, c, f: a.parameterAsDouble(p, s.name, c),
    "bool": lambda a, s, p, c, f: a.parameterAsBoolean(p, s.name, c),
    "enum": lambda a, s, p, c, f: s.values[a.parameterAsEnum(p, s.name, c)],
    "json": lambda a, s, p, c, f: _json(a, s, p, c),
    "string": lambda a, s, p, c, f: a.parameterAsString(p, s.name, c) or (None if s.optional else ""),
    "raster": lambda a, s, p, c, f: raster_path(a, p, s.name, c, f),
    "extent": lambda a, s, p, c, f: _extent(a, s, p, c),
    "vector": lambda a, s, p, c, f: vector_uri(a, p, s.name, c, f),
    "file": lambda a, s, p, c, f: a.parameterAsFile(p, s.name, c),
    "file_out": lambda a, s, p, c, f: a.parameterAsFileOutput(p, s.name, c),
    "raster_out": lambda a, s, p, c, f: a.parameterAsOutputLayer(p, s.name, c) or (None if s.optional else ""),
}
_GETTERS.update(
    field=_GETTERS["string"], folder_out=_GETTERS["string"], folder=_GETTERS["file"], vector_out=_GETTERS["raster_out"]
)


def _value(alg: QgsProcessingAlgorithm, s: Spec, parameters: dict, context, feedback) -> Any:
    if s.optional and parameters.get(s.name) in (None, "") and s.kind not in ("bool", "enum", "string", "json"):
        return None  # numbers left empty (core's default), layers and outputs not asked for
    return _GETTERS[s.kind](alg, s, parameters, context, feedback)


def params_from_parameters(alg: QgsProcessingAlgorithm, cls: type, parameters: dict, context, feedback) -> Any:
    """The step's dataclass from Processing's parameters: enums index → value, JSON parsed, layers as
    GDAL/OGR sources (adapter.layers); QgsProcessingException names the parameter on bad input."""
    return cls(**{s.field: _value(alg, s, parameters, context, feedback) for s in schema(cls)})


def _why_not_acceptable(p: QgsProcessingParameterDefinition, value: Any) -> str | None:
    """One line saying why Processing refuses `value` for `p` (None: no better words than QGIS's)."""
    if isinstance(p, QgsProcessingParameterNumber):
        return _number_problem(p, value)
    if isinstance(p, QgsProcessingParameterFile) and isinstance(value, str):
        return _file_problem(p, value)
    return None


def _number_problem(p: QgsProcessingParameterNumber, value: Any) -> str:
    if not _is_number(value):
        kind = "a number" if p.dataType() == QgsProcessingParameterNumber.Double else "a whole number"
        return f"{p.name()} must be {kind} (got {value!r}, which is not a number)."
    spec = "g" if p.dataType() == QgsProcessingParameterNumber.Double else ".0f"
    lo, hi = format(p.minimum(), spec), format(p.maximum(), spec)
    if p.maximum() >= 1e300:
        return f"{p.name()} must be at least {lo} (got {value})."
    return f"{p.name()} must be between {lo} and {hi} (got {value})."


def _file_problem(p: QgsProcessingParameterFile, value: str) -> str | None:
    if p.behavior() == QgsProcessingParameterFile.Folder:
        return f"{p.name()}: {value} is a file; choose a folder." if os.path.isfile(value) else None
    exts = [p.extension()] if p.extension() else re.findall(r"\*\.(\w+)", p.fileFilter())
    wanted = "a " + " or ".join(f".{e}" for e in exts) if exts else "a"
    if os.path.isdir(value):
        return f"{p.name()}: {value} is a folder; give {wanted} file."
    return f"{p.name()} must be {wanted} file (got {value})." if exts else None


def _is_number(value: Any) -> bool:
    """Whether a Processing parameter value reads as a number ("12", 12.0; not "abc" or "nan")."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _own_signals() -> tuple[int, ...]:
    """The signals a Processing run may turn into its cancel flag: SIGTERM where the process is
    GeoSeg's own (qgis_process); none inside the QGIS desktop, whose handlers belong to QGIS."""
    import signal

    from qgis.core import QgsApplication

    return (signal.SIGTERM,) if QgsApplication.platform() == "qgis_process" else ()


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
        """QGIS says only "Incorrect parameter value for X"; say what X must be: a number in its range,
        a file (not a folder) with one of its extensions, a folder (not a file)."""
        ok, message = super().checkParameterValues(parameters, context)
        if ok:
            return ok, message
        for p in self.parameterDefinitions():
            value = parameters.get(p.name())
            if value in (None, "") or p.checkValueIsAcceptable(value, context):
                continue
            why = _why_not_acceptable(p, value)
            if why:
                return False, why
        return ok, message

    def run_core(self, func: Callable[..., Any], params: Any, feedback: QgsProcessingFeedback) -> Any:
        """Call a core entry point; GeoSegError becomes a QgsProcessingException (one line). Under
        qgis_process SIGTERM cancels the run (core.signals), as the Cancel button does in QGIS."""
        with engine_log_to(feedback), cancel_on_signals(_own_signals(), also=feedback.isCanceled) as cancelled:
            try:
                return func(params, progress=lambda f: feedback.setProgress(100.0 * f), cancelled=cancelled)
            except Cancelled as e:
                raise QgsProcessingException(cancelled.explain(str(e))) from None
            except GeoSegError as e:
                raise QgsProcessingException(str(e)) from None
            except Exception as e:
                if disk_full_cause(e) is not None:  # where core has no staged writer (training's checkpoints)
                    outputs = self.destinationParameterDefinitions()
                    what = outputs[0].name() if outputs else "Output"
                    raise QgsProcessingException(str(disk_full_error(what, e))) from None
                raise
