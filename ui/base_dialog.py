"""GeoSegDialog: what every GeoSeg dialog shares, so each dialog file holds only its own widgets.

A GeoSeg dialog is a thin, non-modal form over one core entry point: it turns widgets into core's
parameter object, checks them cheaply, runs core in a `ui.tasks.CoreTask` through the QGIS task
manager (QGIS stays responsive), and reports the outcome in the message bar and in its own message
label. This base holds the form helpers, the message/progress/Run-Cancel-Close footer, one task at
a time, success/error/cancel reporting and the remembered values (QgsSettings).

A subclass (export, train, segment, assess):
- calls `super().__init__(iface, title, object_name, parent)`, sets its own attributes, then `_setup()`;
- implements `_build(root)`: its form, made with the helpers (passing `setting=` for the values worth
  remembering): value parameters through `_field` (from core's schema) where the layout wants them,
  its layer and file widgets by hand but recorded in `self.fields`; ending with `_add_run_controls`;
  it names `self.rest_form`, where `_place_rest` puts every value parameter it did not place (so a
  parameter added to core/params.py appears with no dialog code);
- sets `settings_prefix` and `params_class` and implements `params()` (`self.params_class(**self.field_values()` plus
  the layers and files; only GUI checks such as "choose a layer"), `_checked_params()` (core's own
  validate/preflight: its GeoSegError(param=...) marks the field), `_create_task(p)` and
  `_success_text(result)`; optionally `_show_result(result)` and `_can_run()`.
"""

from __future__ import annotations

import shutil
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import GeoSegError
from ..core.params import VALUE_KINDS, Spec, by_name, parse_json_object, schema, spec
from .tasks import CoreTask

ERROR_STYLE = "color: #c00000;"
FIELD_ERROR_STYLE = "border: 1px solid #c00000;"  # the widget of the parameter a GeoSegError names
INT_MAX = 2147483647
FLOAT_MAX = 1e9

# (widget type, getter, setter) of the values a dialog can remember; the first matching type wins
_ACCESSORS = (
    (QgsFileWidget, "filePath", "setFilePath"),
    (QComboBox, "currentIndex", "setCurrentIndex"),
    (QCheckBox, "isChecked", "setChecked"),
    (QLineEdit, "text", "setText"),
    (QAbstractSpinBox, "value", "setValue"),
)


def widget_value(widget: QWidget) -> Any:
    """The remembered value of a widget: path, combo index, check state, text or number."""
    return next(getattr(widget, get)() for kind, get, _ in _ACCESSORS if isinstance(widget, kind))


def set_widget_value(widget: QWidget, value: Any) -> None:
    """Put back a value read by `widget_value`; a combo index out of range keeps the default
    (the list may have changed between plugin versions)."""
    if isinstance(widget, QComboBox) and not 0 <= value < widget.count():
        return
    next(getattr(widget, put) for kind, _, put in _ACCESSORS if isinstance(widget, kind))(value)


class GeoSegDialog(QDialog):
    """Non-modal dialog running one core function at a time in the task manager (see the module doc)."""

    settings_prefix = ""  # e.g. "geoseg/export/": QgsSettings group of the remembered values
    params_class: type | None = None  # the step's dataclass (core.params) whose widgets `_field` builds

    def __init__(self, iface: Any, title: str, object_name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.task: CoreTask | None = None  # the running task; the task manager does not keep it alive
        self.last_result: Any = None  # core's result of the last successful run
        self.last_error: str | None = None  # message of the last failed or cancelled run
        self._temp_dirs: list[str] = []  # temporary copies of layers (adapter.layers), removed after a run
        self._remembered: dict[str, QWidget] = {}  # QgsSettings key → widget, filled by _add(setting=...)
        self.fields: dict[str, QWidget] = {}  # params field name → its widget (_field, or the dialog's own)
        self.rest_form: QFormLayout | None = None  # where `_place_rest` puts parameters `_build` left out
        self._marked: QWidget | None = None  # the widget marked by the last GeoSegError(param=...)
        self.setWindowTitle(title)
        self.setObjectName(object_name)

    def _setup(self) -> None:
        """Build the form, then load the remembered values, then enable Run: in that order, because
        restoring needs the widgets and fires their change signals, and Run depends on both."""
        self._build(QVBoxLayout(self))
        self._place_rest()
        self.restore_settings()
        self._set_running(False)

    def _place_rest(self) -> None:
        """Give every value parameter of the step that `_build` did not place a widget in
        `rest_form`, so that a parameter added to core/params.py appears in the dialog with no
        dialog code (object name: the field name in camelCase; remembered under the field name)."""
        if self.params_class is None:
            return
        rest = [s for s in schema(self.params_class) if s.field not in self.fields and s.kind in VALUE_KINDS]
        if rest and self.rest_form is None:
            raise RuntimeError(f"{type(self).__name__} sets no rest_form for {', '.join(s.name for s in rest)}")
        for s in rest:
            head, *tail = s.field.split("_")
            self._field(self.rest_form, s.field, head + "".join(t.title() for t in tail), s.field)

    # ---------------------------------------------------------------- form helpers
    def _help_label(self, root: QVBoxLayout, text: str) -> QLabel:
        """The one-paragraph description at the top: what the dialog makes from what."""
        label = QLabel(text)
        label.setWordWrap(True)
        label.setObjectName("helpLabel")
        root.addWidget(label)
        return label

    def _group(self, column: QVBoxLayout, title: str, kind: type = QGroupBox) -> QFormLayout:
        """A titled box (QGroupBox, or e.g. QgsCollapsibleGroupBox for advanced options) with a form."""
        box = kind(title, self)
        toggle = box.findChild(QToolButton, "collapseButton")  # QgsCollapsibleGroupBox's fold button
        if toggle is not None:
            toggle.setToolTip(f"Show or hide the {title.lower()} options.")
        form = QFormLayout(box)
        column.addWidget(box)
        return form

    def _add(
        self, form: QFormLayout, label: str | None, widget: Any, name: str, tip: str, setting: str | None = None
    ) -> Any:
        """Add a named widget with its tooltip (tests and screenshots find widgets by object name).

        `label=None` spans the row; `setting` remembers the widget's value under that key."""
        widget.setObjectName(name)
        widget.setToolTip(tip)
        if label is None:
            form.addRow(widget)
        else:
            form.addRow(label, widget)
        if setting is not None:
            self._remembered[setting] = widget
        return widget

    def _combo(
        self, form: QFormLayout, label: str, items: tuple[str, ...], name: str, tip: str, setting: str | None = None
    ) -> QComboBox:
        """A combo of labels whose index maps to a tuple of core names (MODES, ARCHITECTURES, ...)."""
        combo = self._add(form, label, QComboBox(self), name, tip, setting)
        combo.addItems(list(items))
        return combo

    def _field(
        self, form: QFormLayout, field_name: str, name: str, setting: str | None = None, cls: type | None = None
    ) -> Any:
        """The widget of one parameter, built from core's schema (core.params): label, tooltip, range,
        default, choices and special value text; `name` is its object name (tests and scripts use it)."""
        s = spec(cls or self.params_class, field_name)
        widget = self._schema_widget(s)
        widget.setProperty("geosegField", field_name)
        self._add(form, "" if s.kind == "bool" else s.label, widget, name, s.meta.help, setting)
        self.fields[field_name] = widget
        return widget

    def _schema_widget(self, s: Spec) -> QWidget:
        m = s.meta
        default = None if s.required else s.default
        if s.kind == "int":
            lo = m.unset if m.unset is not None else int(m.minimum if m.minimum is not None else -INT_MAX)
            hi = INT_MAX if m.maximum is None else int(m.maximum)
            widget = self._spin(lo, hi, lo if default is None else default)
        elif s.kind == "float":
            lo = -FLOAT_MAX if m.minimum is None else m.minimum
            widget = self._double(
                lo, FLOAT_MAX if m.maximum is None else m.maximum, default, m.decimals or 2, m.step or 0.05
            )
        elif s.kind == "bool":
            widget = QCheckBox(s.label, self)
            widget.setChecked(bool(default))
        elif s.kind == "enum":
            widget = QComboBox(self)
            widget.addItems(list(s.labels))
            widget.setCurrentIndex(s.values.index(default))
        elif s.kind in ("string", "json", "extent"):
            widget = QLineEdit(self)
            widget.setPlaceholderText(m.placeholder)
        else:
            raise ValueError(f"{m.name}: the dialog builds {s.kind!r} widgets itself")
        if m.special and isinstance(widget, QAbstractSpinBox):
            widget.setSpecialValueText(m.special)
        return widget

    def field_value(self, field_name: str) -> Any:
        """The dataclass value of a widget built by `_field` (None for an unset optional number)."""
        s = spec(self.params_class, field_name)
        widget = self.fields[field_name]
        if s.kind == "int":
            value = widget.value()
            return None if s.meta.unset is not None and value == s.meta.unset else value
        if s.kind == "float":
            return widget.value()
        if s.kind == "bool":
            return widget.isChecked()
        if s.kind == "enum":
            return s.values[widget.currentIndex()]
        if s.kind == "json":
            return parse_json_object(widget.text(), s.name, s.meta.placeholder)
        return widget.text().strip() or None

    def field_values(self) -> dict[str, Any]:
        """`field_value` of every widget built by `_field`: the value part of the step's dataclass."""
        return {f: self.field_value(f) for f, w in self.fields.items() if w.property("geosegField") == f}

    @staticmethod
    def _about(param: str, call: Any, *args: Any) -> Any:
        """`call(*args)`, its GeoSegError (e.g. adapter.layers' "choose a raster layer") said to be about
        the parameter `param` when it names none, so that `mark_field` finds the widget."""
        try:
            return call(*args)
        except GeoSegError as e:
            if e.param is None:
                e.param = param
            raise

    def mark_field(self, param: str | None) -> QWidget | None:
        """Mark the widget of the parameter a GeoSegError names (red border, focus); unmark the last one."""
        if self._marked is not None and not sip.isdeleted(self._marked):
            self._marked.setStyleSheet("")
        self._marked = None
        if not param or self.params_class is None:
            return None
        try:
            widget = self.fields.get(by_name(self.params_class, param).field)
        except KeyError:
            return None
        if widget is not None:
            widget.setStyleSheet(FIELD_ERROR_STYLE)
            widget.setFocus()
            self._marked = widget
        return widget

    def _spin(self, lo: int, hi: int, value: int) -> QSpinBox:
        spin = QSpinBox(self)
        spin.setRange(lo, hi)
        spin.setValue(value)
        return spin

    def _double(self, lo: float, hi: float, value: float, decimals: int = 2, step: float = 0.05) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setDecimals(decimals)  # before the range: the range is rounded to the decimals
        spin.setRange(lo, hi)
        spin.setSingleStep(step)
        spin.setValue(value)
        return spin

    def _button(self, row: QHBoxLayout, text: str, name: str, tip: str) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(name)
        button.setToolTip(tip)
        button.setAutoDefault(False)  # Enter runs (Run is the default), never Cancel or Close
        row.addWidget(button)
        return button

    def _add_run_controls(self, root: QLayout, noun: str, message_tip: str, run_tip: str, cancel_tip: str) -> None:
        """The footer every dialog has: messageLabel, progress and Run / Cancel / Close.

        `noun` names the work in the tooltips ("export", "training")."""
        self.messageLabel = QLabel(self)
        self.messageLabel.setObjectName("messageLabel")
        self.messageLabel.setWordWrap(True)
        self.messageLabel.setToolTip(message_tip)
        root.addWidget(self.messageLabel)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setToolTip(f"Progress of the running {noun}.")
        root.addWidget(self.progress)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.runButton = self._button(buttons, "Run", "runButton", run_tip)
        self.cancelButton = self._button(buttons, "Cancel", "cancelButton", cancel_tip)
        self.closeButton = self._button(buttons, "Close", "closeButton", f"Close the dialog; a running {noun} goes on.")
        self.runButton.clicked.connect(self.run)
        self.cancelButton.clicked.connect(self.cancel)
        self.closeButton.clicked.connect(self.close)
        self.runButton.setDefault(True)
        root.addLayout(buttons)

    def _show_message(self, text: str, error: bool) -> None:
        """The label under the form: red for problems, plain for progress and success."""
        self.messageLabel.setStyleSheet(ERROR_STYLE if error else "")
        self.messageLabel.setText(text)

    # ---------------------------------------------------------------- subclass interface
    def _build(self, root: QVBoxLayout) -> None:
        """Add the dialog's widgets to `root`, ending with `_add_run_controls(root, ...)`."""
        raise NotImplementedError

    def params(self) -> Any:
        """Core's parameter object built from the widgets; GeoSegError says what is missing."""
        raise NotImplementedError

    def _checked_params(self) -> Any:
        """`params()` plus the cheap checks (core's `validate` included); raises GeoSegError."""
        raise NotImplementedError

    def _create_task(self, p: Any) -> CoreTask:
        """Reset the dialog's own result widgets for a run of `p` and return its (unstarted) task,
        built as CoreTask(description, core_function, p, self._on_success, self._on_error, ...)."""
        raise NotImplementedError

    def _success_text(self, result: Any) -> str:
        """One line for the message bar and label saying what was made and where."""
        raise NotImplementedError

    def _show_result(self, result: Any) -> None:
        """After a success: show more of the result (add a layer, fill a table); nothing by default."""

    def _can_run(self) -> bool:
        """Whether Run may be enabled at all (e.g. False when an optional dependency is missing)."""
        return True

    # ---------------------------------------------------------------- running
    def validate_inputs(self) -> Any:
        """Params when the inputs pass the cheap checks; otherwise None and the problem shown."""
        try:
            p = self._checked_params()
        except GeoSegError as e:
            self._remove_temp_dirs()
            self._show_message(str(e), error=True)
            self.mark_field(e.param)
            return None
        self._show_message("", error=False)
        self.mark_field(None)
        return p

    def run(self) -> CoreTask | None:
        """Start the task in the task manager; returns it (None when the inputs are invalid)."""
        if self.task is not None:
            return None  # one run at a time; Run is disabled meanwhile
        p = self.validate_inputs()
        if p is None:
            return None
        self.save_settings()
        self.last_result = None
        self.last_error = None
        self.progress.setValue(0)
        task = self._create_task(p)
        task.progressChanged.connect(self._on_progress)
        self.task = task  # the task manager does not keep the Python wrapper alive
        self._set_running(True)
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel(self) -> None:
        """Ask the running task to stop; core decides what stays (see each core function)."""
        if self.task is not None:
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        self.runButton.setEnabled(self._can_run() and not running)
        self.cancelButton.setEnabled(running)

    def _on_progress(self, value: float) -> None:
        if not sip.isdeleted(self):  # the task may outlive an unloaded plugin's dialog
            self.progress.setValue(int(value))

    def _push(self, text: str, level: int, seconds: int) -> None:
        """To QGIS's message bar; a dialog opened without QGIS's interface (scripts) shows only its label."""
        if self.iface is not None:
            self.iface.messageBar().pushMessage("GeoSeg", text, level, seconds)

    def _on_success(self, result: Any) -> None:
        self.last_result = result
        self.last_error = None
        text = self._success_text(result)
        try:
            self._push(text, Qgis.Success, 10)
            self._show_result(result)
        finally:  # Run must come back even if reporting failed
            self._finish(text, error=False)

    def _on_error(self, message: str) -> None:
        """Core's error or cancellation: a warning that fades when cancelled, a lasting error otherwise."""
        cancelled = self.task is not None and self.task.isCanceled()
        self.last_result = None
        self.last_error = message
        try:
            level = Qgis.Warning if cancelled else Qgis.Critical
            self._push(message, level, 10 if cancelled else 0)
        finally:
            self._finish(message, error=True)

    def _finish(self, message: str, error: bool) -> None:
        self.task = None
        self._remove_temp_dirs()
        if sip.isdeleted(self):  # the plugin was unloaded while the task ran
            return
        self._show_message(message, error)
        if not error:
            self.progress.setValue(100)
        self._set_running(False)

    def closeEvent(self, event: Any) -> None:
        """Closing only hides the dialog; a running task goes on and reports when done."""
        if self.task is None:
            self._remove_temp_dirs()
        super().closeEvent(event)

    def _remove_temp_dirs(self) -> None:
        for folder in self._temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._temp_dirs.clear()

    # ---------------------------------------------------------------- settings
    def save_settings(self) -> None:
        """Remember the values (those added with `setting=`) so the next run starts from them."""
        s = QgsSettings()
        for key, widget in self._remembered.items():
            s.setValue(self.settings_prefix + key, widget_value(widget))

    def restore_settings(self) -> None:
        """Load the values saved by the last run; absent or unreadable values keep the defaults."""
        s = QgsSettings()
        for key, widget in self._remembered.items():
            default = widget_value(widget)
            try:
                set_widget_value(widget, s.value(self.settings_prefix + key, default, type=type(default)))
            except (TypeError, ValueError):
                pass
