"""GeoSeg's settings page: default device, default batch size and the dependencies folder.

One widget, shown two ways: as a page of QGIS's Settings ▸ Options (QgsOptionsWidgetFactory) and in
the "GeoSeg ▸ Settings…" dialog. Values live in QgsSettings under `geoseg/settings/`; the Train and
Segment dialogs take their device and batch size defaults from here (`apply_defaults`).
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget, QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import deps
from ..core.options import DEVICE_LABELS, DEVICES

PREFIX = "geoseg/settings/"
KEY_DEVICE = PREFIX + "device"
KEY_BATCH_SIZE = PREFIX + "batch_size"
KEY_DEPS_DIR = PREFIX + "deps_dir"
DEFAULT_BATCH_SIZE = 8
# the dialogs' remembered values that a new default replaces (QgsSettings keys)
DIALOG_KEYS = ("geoseg/train/device", "geoseg/train/batch_size", "geoseg/segment/device", "geoseg/segment/batch_size")
ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icons", "geoseg.svg")


def default_deps_dir() -> str:
    return deps.target_dir(QgsApplication.qgisSettingsDirPath())


def deps_dir() -> str:
    """The folder pip installs torch & co. into, first on sys.path from plugin load on."""
    return QgsSettings().value(KEY_DEPS_DIR, "", type=str) or default_deps_dir()


def default_device() -> int:
    """Index into core.options.DEVICES (0 auto, 1 cpu, 2 cuda)."""
    value = QgsSettings().value(KEY_DEVICE, 0, type=int)
    return value if 0 <= value < len(DEVICES) else 0


def default_batch_size() -> int:
    return max(1, QgsSettings().value(KEY_BATCH_SIZE, DEFAULT_BATCH_SIZE, type=int))


def apply_defaults(device: QComboBox, batch_size: QSpinBox) -> None:
    """A dialog's device and batch size before its remembered values are restored."""
    device.setCurrentIndex(default_device())
    batch_size.setValue(default_batch_size())


class SettingsWidget(QWidget):
    """The form; `save()` writes QgsSettings. Tests and screenshots find widgets by object name."""

    install_requested = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("GeoSegSettingsWidget")
        root = QVBoxLayout(self)
        help_label = QLabel(
            "Defaults for the Train and Segment dialogs, and where GeoSeg installs PyTorch and "
            "onnxruntime. Changing the device or batch size resets those dialogs to it.",
            self,
        )
        help_label.setWordWrap(True)
        help_label.setObjectName("helpLabel")
        root.addWidget(help_label)

        box = QGroupBox("Defaults", self)
        form = QFormLayout(box)
        root.addWidget(box)
        self.device = QComboBox(self)
        self.device.addItems(list(DEVICE_LABELS))
        self._named(
            self.device,
            "device",
            "Device the Train and Segment dialogs start with: Auto uses a CUDA GPU "
            "when torch or onnxruntime sees one, else the CPU.",
        )
        form.addRow("Device", self.device)
        self.batchSize = QSpinBox(self)
        self.batchSize.setRange(1, 1024)
        self._named(
            self.batchSize,
            "batchSize",
            "Batch size the Train and Segment dialogs start with; lower it " "when memory runs out.",
        )
        form.addRow("Batch size", self.batchSize)

        box = QGroupBox("Dependencies (PyTorch, onnx, onnxruntime)", self)
        form = QFormLayout(box)
        root.addWidget(box)
        self.depsDir = QgsFileWidget(self)
        self.depsDir.setStorageMode(QgsFileWidget.GetDirectory)
        self.depsDir.setDialogTitle("Dependencies folder")
        self._named(
            self.depsDir,
            "depsDir",
            "Folder pip installs GeoSeg's packages into; it is put first on "
            "Python's import path when the plugin loads. Empty: the default in this QGIS profile.",
        )
        self.depsDir.lineEdit().setPlaceholderText(default_deps_dir())
        form.addRow("Folder", self.depsDir)
        row = QHBoxLayout()
        self.installButton = QPushButton("Install / check dependencies…", self)
        self._named(
            self.installButton,
            "installButton",
            "Open the installer: shows what is missing and installs " "it with pip into the folder above.",
        )
        self.installButton.clicked.connect(self.install_requested.emit)
        self.detectButton = QPushButton("Show device", self)
        self._named(
            self.detectButton,
            "detectButton",
            "Import torch and onnxruntime now and show the device and " "execution providers they see.",
        )
        self.detectButton.clicked.connect(self.show_device)
        row.addWidget(self.installButton)
        row.addWidget(self.detectButton)
        row.addStretch(1)
        form.addRow(row)
        self.missingLabel = QLabel(self)
        self._named(self.missingLabel, "missingLabel", "Packages GeoSeg needs that this Python cannot import.")
        self.missingLabel.setWordWrap(True)
        form.addRow(self.missingLabel)
        self.deviceInfo = QLabel(self)
        self._named(
            self.deviceInfo,
            "deviceInfo",
            "The device torch trains on and the onnxruntime execution " "providers available (press Show device).",
        )
        self.deviceInfo.setWordWrap(True)
        form.addRow(self.deviceInfo)
        root.addStretch(1)
        self.load()

    def _named(self, widget: QWidget, name: str, tip: str) -> None:
        widget.setObjectName(name)
        widget.setToolTip(tip)

    def load(self) -> None:
        self.device.setCurrentIndex(default_device())
        self.batchSize.setValue(default_batch_size())
        self.depsDir.setFilePath(QgsSettings().value(KEY_DEPS_DIR, "", type=str))
        self.refresh_missing()

    def refresh_missing(self) -> None:
        lacking = deps.missing_for("all")
        self.missingLabel.setText(
            f"Missing: {deps.describe_missing(lacking)}" if lacking else "All deep-learning packages can be imported."
        )

    def show_device(self) -> None:
        self.deviceInfo.setText("\n".join(deps.summary_lines(deps.device_summary())))

    def save(self) -> None:
        """Write the values; a new device or batch size default replaces what the dialogs remembered."""
        s = QgsSettings()
        if (self.device.currentIndex(), self.batchSize.value()) != (default_device(), default_batch_size()):
            for key in DIALOG_KEYS:
                s.remove(key)
        s.setValue(KEY_DEVICE, self.device.currentIndex())
        s.setValue(KEY_BATCH_SIZE, self.batchSize.value())
        folder = self.depsDir.filePath().strip()
        s.setValue(KEY_DEPS_DIR, folder)
        deps.activate(folder or default_deps_dir())  # a new folder is usable at once


class SettingsPage(QgsOptionsPageWidget):
    """GeoSeg's page in Settings ▸ Options; QGIS calls apply() on OK."""

    def __init__(self, parent: QWidget | None = None, on_install: Any = None) -> None:
        super().__init__(parent)
        self.setObjectName("GeoSegOptionsPage")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.widget = SettingsWidget(self)
        if on_install is not None:
            self.widget.install_requested.connect(on_install)
        layout.addWidget(self.widget)

    def apply(self) -> None:
        self.widget.save()


class OptionsFactory(QgsOptionsWidgetFactory):
    """Registered with iface.registerOptionsWidgetFactory by the plugin."""

    def __init__(self, on_install: Any = None) -> None:
        super().__init__("GeoSeg", QIcon(ICON))
        self.on_install = on_install

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def createWidget(self, parent: QWidget | None = None) -> SettingsPage:
        return SettingsPage(parent, self.on_install)


class SettingsDialog(QDialog):
    """ "GeoSeg ▸ Settings…": the same widget with OK / Cancel."""

    def __init__(self, iface: Any = None, parent: QWidget | None = None, on_install: Any = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.setWindowTitle("GeoSeg — Settings")
        self.setObjectName("GeoSegSettingsDialog")
        layout = QVBoxLayout(self)
        self.widget = SettingsWidget(self)
        if on_install is not None:
            self.widget.install_requested.connect(on_install)
        layout.addWidget(self.widget)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel, self)
        self.buttons.setObjectName("buttons")
        self.buttons.button(QDialogButtonBox.Ok).setToolTip("Save the settings and close.")
        self.buttons.button(QDialogButtonBox.Cancel).setToolTip("Close without saving.")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def showEvent(self, event: Any) -> None:
        self.widget.load()  # what is saved now, not what was shown last time
        super().showEvent(event)

    def accept(self) -> None:
        self.widget.save()
        super().accept()
