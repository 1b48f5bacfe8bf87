"""The settings page (Options page and GeoSeg ▸ Settings…) and what every GeoSeg dialog shares:
tooltips on every input, values remembered under the one `geoseg/` prefix."""

from __future__ import annotations

import sys

import pytest
from qgis.core import QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget, QgsOptionsPageWidget
from qgis.PyQt.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QDialog,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QTextBrowser,
    QWidget,
)

from geoseg.core import deps
from geoseg.ui import settings
from geoseg.ui.assess_dialog import AssessDialog
from geoseg.ui.deps_dialog import DepsDialog
from geoseg.ui.export_dialog import ExportChipsDialog
from geoseg.ui.segment_dialog import SegmentDialog
from geoseg.ui.settings import OptionsFactory, SettingsDialog, SettingsWidget
from geoseg.ui.train_dialog import TrainDialog

INPUTS = (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QgsFileWidget,
    QListWidget,
    QPlainTextEdit,
    QTextBrowser,
)
KEYS = ("geoseg/settings", "geoseg/train", "geoseg/segment", "geoseg/assess")


@pytest.fixture(autouse=True)
def clean_settings():
    for key in KEYS:
        QgsSettings().remove(key)
    yield
    for key in KEYS:
        QgsSettings().remove(key)


def untipped_inputs(dlg: QWidget) -> list[str]:
    """Input widgets with no tooltip of their own or on the composite widget they are part of
    (a QgsFileWidget's line edit and button, a spin box's editor, a collapsible box's toggle)."""
    bad = []
    for w in dlg.findChildren(QWidget):
        if not isinstance(w, INPUTS) or w.toolTip():
            continue
        parent, covered = w.parentWidget(), False
        while parent is not None and parent is not dlg:
            if isinstance(parent, INPUTS) and parent.toolTip():
                covered = True
                break
            parent = parent.parentWidget()
        if not covered and w.objectName() not in ("qt_spinbox_lineedit",) and w.isVisibleTo(dlg):
            bad.append(f"{type(w).__name__} '{w.objectName()}' ({getattr(w, 'text', lambda: '')()})")
    return bad


@pytest.mark.parametrize(
    "make",
    [
        lambda iface: ExportChipsDialog(iface),
        lambda iface: TrainDialog(iface),
        lambda iface: SegmentDialog(iface),
        lambda iface: AssessDialog(iface),
        lambda iface: DepsDialog(iface, cuda=False),
        lambda iface: SettingsDialog(iface),
    ],
    ids=["export", "train", "segment", "assess", "deps", "settings"],
)
def test_every_input_has_a_tooltip_and_the_dialog_has_help(qgis_app, qgis_iface, make):
    dlg = make(qgis_iface)
    try:
        dlg.show()
        qgis_app.processEvents()
        assert untipped_inputs(dlg) == []
        help_label = dlg.findChild(QWidget, "helpLabel")
        assert help_label is not None and len(help_label.text()) > 40
        assert dlg.windowTitle().startswith("GeoSeg — ")
    finally:
        dlg.close()
        dlg.deleteLater()


def test_dialogs_remember_under_one_prefix(qgis_app, qgis_iface):
    for cls in (ExportChipsDialog, TrainDialog, SegmentDialog, AssessDialog):
        dlg = cls(qgis_iface)
        try:
            assert dlg.settings_prefix.startswith("geoseg/") and dlg._remembered
        finally:
            dlg.deleteLater()
    for key in (settings.KEY_DEVICE, settings.KEY_BATCH_SIZE, settings.KEY_DEPS_DIR, *settings.DIALOG_KEYS):
        assert key.startswith("geoseg/")


def test_settings_are_the_dialogs_defaults(qgis_app, qgis_iface, tmp_path):
    """Saved settings become the Train and Segment dialogs' device and batch size; a new default
    replaces what the dialogs remembered; the deps folder goes on sys.path at once."""
    trained = TrainDialog(qgis_iface)
    trained.batchSize.setValue(3)
    trained.save_settings()  # the user's last Train run used batch 3
    trained.deleteLater()
    assert QgsSettings().value("geoseg/train/batch_size", type=int) == 3

    saved = sys.path[:]
    widget = SettingsWidget()
    try:
        assert widget.device.currentIndex() == 0 and widget.batchSize.value() == settings.DEFAULT_BATCH_SIZE
        assert widget.depsDir.filePath() == "" and settings.deps_dir() == settings.default_deps_dir()
        assert settings.default_deps_dir().startswith(QgsApplication.qgisSettingsDirPath().rstrip("/"))
        widget.device.setCurrentIndex(1)
        widget.batchSize.setValue(2)
        widget.depsDir.setFilePath(str(tmp_path / "deps"))
        widget.save()
        assert sys.path[0] == str(tmp_path / "deps")
    finally:
        sys.path[:] = saved
        widget.deleteLater()
    assert (settings.default_device(), settings.default_batch_size()) == (1, 2)
    assert settings.deps_dir() == str(tmp_path / "deps")
    assert QgsSettings().value("geoseg/train/batch_size") is None  # reset to the new default
    for cls in (TrainDialog, SegmentDialog):
        dlg = cls(qgis_iface)
        try:
            assert dlg.device.currentIndex() == 1 and dlg.batchSize.value() == 2
            dlg.batchSize.setValue(5)
            dlg.save_settings()
        finally:
            dlg.deleteLater()
    again = TrainDialog(qgis_iface)  # remembered values win over the defaults until they change
    try:
        assert again.batchSize.value() == 5
    finally:
        again.deleteLater()


def test_options_page_and_settings_dialog(qgis_app, qgis_iface):
    factory = OptionsFactory()
    assert factory.title() == "GeoSeg" and not factory.icon().isNull()
    page = factory.createWidget(None)
    try:
        assert isinstance(page, QgsOptionsPageWidget)
        page.widget.batchSize.setValue(16)
        page.apply()  # QGIS calls apply() when the Options dialog is accepted
        assert settings.default_batch_size() == 16
    finally:
        page.deleteLater()
    requested: list[bool] = []
    dlg = SettingsDialog(qgis_iface, on_install=lambda: requested.append(True))
    try:
        dlg.show()
        assert dlg.widget.batchSize.value() == 16
        dlg.widget.device.setCurrentIndex(2)
        dlg.accept()
        assert settings.default_device() == 2 and not dlg.isVisible()
        dlg.widget.installButton.click()
        assert requested == [True]
        dlg.widget.show_device()
        text = dlg.widget.deviceInfo.text()
        assert text.startswith("device: ") and "providers available: " in text and "CPUExecutionProvider" in text
        lacking = deps.missing_for("all")
        assert ("Missing" in dlg.widget.missingLabel.text()) == bool(lacking)
    finally:
        dlg.deleteLater()


def test_segment_dialog_shows_device_and_providers(qgis_app, qgis_iface):
    dlg = SegmentDialog(qgis_iface)
    try:
        text = dlg.deviceInfo.text()
        assert text.startswith("device: ") and "onnxruntime" in text and "CPUExecutionProvider" in text
        assert isinstance(dlg, QDialog)
    finally:
        dlg.deleteLater()
