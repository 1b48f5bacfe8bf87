"""The dependency installer: says what is missing, shows the exact pip command, runs it and streams its output.

pip runs in a QProcess (never blocking the QGIS window) with QGIS's own Python interpreter, into the
plugin's per-profile folder (core.deps.target_dir), which plugin load puts first on sys.path. After
a successful install the import caches are invalidated, so Train and Segment work without a restart
when Python can import the packages at once; otherwise the dialog says to restart QGIS.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core import deps
from .base_dialog import ERROR_STYLE

STEP_TITLES = {
    "train": "Train model",
    "segment": "Segment raster",
    "exportonnx": "Export ONNX",
    "all": "GeoSeg's deep-learning steps",
}
VARIANT_LABELS = ("NVIDIA GPU (CUDA wheels)", "CPU only")
SUCCESS_STYLE = "color: #006400;"


class DepsDialog(QDialog):
    """Non-modal installer. `modules`/`packages`/`extra_args` are for tests and unusual setups
    (e.g. `--no-index --find-links <folder>`); by default it installs what GeoSeg lacks."""

    installed = pyqtSignal()  # the packages import now: the caller may continue without a restart

    def __init__(
        self,
        iface: Any = None,
        parent: QWidget | None = None,
        step: str = "all",
        modules: Sequence[str] | None = None,
        packages: Sequence[str] | None = None,
        target: str | None = None,
        python: str | None = None,
        extra_args: Sequence[str] = (),
        cuda: bool | None = None,
    ) -> None:
        super().__init__(parent)
        self.iface = iface
        self.setWindowTitle("GeoSeg — Install dependencies")
        self.setObjectName("GeoSegDepsDialog")
        self.step = step
        self._fixed = modules is not None  # given by the caller: not re-detected
        self.modules = list(deps.missing_for("all") if modules is None else modules)
        self._packages = list(packages) if packages is not None else None
        if target is None:
            from .settings import deps_dir

            target = deps_dir()
        self.target = target
        self.python = python or deps.find_python()
        self.extra_args = list(extra_args)
        self.detected_cuda = deps.has_nvidia_driver() if cuda is None else cuda
        self.gpus = deps.gpu_names() if cuda is None and self.detected_cuda else []
        self.process: QProcess | None = None
        self.lines: list[str] = []  # pip's output, line by line, as shown
        self.exit_code: int | None = None
        self.cancelled = False
        self.succeeded = False
        self._buffer = b""
        self._build()
        self.set_step(step)

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.helpLabel = QLabel(self)
        self.helpLabel.setObjectName("helpLabel")
        self.helpLabel.setWordWrap(True)
        root.addWidget(self.helpLabel)
        self.missingList = QListWidget(self)
        self.missingList.setObjectName("missingList")
        self.missingList.setToolTip("Python packages GeoSeg needs that QGIS's Python cannot import.")
        self.missingList.setMaximumHeight(90)
        root.addWidget(self.missingList)

        form = QFormLayout()
        root.addLayout(form)
        self.variant = QComboBox(self)
        self.variant.setObjectName("variant")
        self.variant.addItems(list(VARIANT_LABELS))
        self.variant.setToolTip(
            "CUDA wheels (several GB) use an NVIDIA GPU; CPU wheels are much smaller. "
            "Chosen from the NVIDIA driver found on this machine."
        )
        self.variant.setCurrentIndex(0 if self.detected_cuda else 1)
        form.addRow("Wheels", self.variant)
        self.detectedLabel = QLabel(self._detected_text(), self)
        self.detectedLabel.setObjectName("detectedLabel")
        self.detectedLabel.setToolTip("What GeoSeg found: an NVIDIA driver (nvidia-smi or /proc/driver/nvidia).")
        form.addRow("Detected", self.detectedLabel)
        self.targetLabel = QLabel(self.target, self)
        self.targetLabel.setObjectName("targetLabel")
        self.targetLabel.setWordWrap(True)
        self.targetLabel.setToolTip(
            "The plugin's own package folder (GeoSeg ▸ Settings); QGIS's Python is not " "touched."
        )
        form.addRow("Into", self.targetLabel)
        self.pythonLabel = QLabel(self.python or "not found", self)
        self.pythonLabel.setObjectName("pythonLabel")
        self.pythonLabel.setToolTip("QGIS's own Python interpreter, which runs pip (the wheels must match it).")
        form.addRow("Python", self.pythonLabel)
        self.commandView = QPlainTextEdit(self)
        self.commandView.setObjectName("commandView")
        self.commandView.setReadOnly(True)
        self.commandView.setMaximumHeight(70)
        self.commandView.setToolTip("The exact command that Install runs; you may also run it in a terminal.")
        form.addRow("Command", self.commandView)

        self.outputView = QPlainTextEdit(self)
        self.outputView.setObjectName("outputView")
        self.outputView.setReadOnly(True)
        self.outputView.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.outputView.setToolTip("pip's output, line by line, while it runs.")
        self.outputView.setMinimumHeight(180)
        root.addWidget(self.outputView, 1)
        self.statusLabel = QLabel(self)
        self.statusLabel.setObjectName("statusLabel")
        self.statusLabel.setWordWrap(True)
        self.statusLabel.setToolTip("The outcome of the installation.")
        root.addWidget(self.statusLabel)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.installButton = self._button(
            buttons, "Install", "installButton", "Run the command above; QGIS stays usable meanwhile."
        )
        self.cancelButton = self._button(
            buttons, "Cancel", "cancelButton", "Stop pip; nothing is imported from " "a half-finished installation."
        )
        self.closeButton = self._button(
            buttons, "Close", "closeButton", "Close this window; a running " "installation goes on."
        )
        self.installButton.clicked.connect(self.install)
        self.cancelButton.clicked.connect(self.cancel)
        self.closeButton.clicked.connect(self.close)
        root.addLayout(buttons)
        self.variant.currentIndexChanged.connect(self._update_command)
        self.resize(720, 560)

    def _button(self, row: QHBoxLayout, text: str, name: str, tip: str) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(name)
        button.setToolTip(tip)
        button.setAutoDefault(False)
        row.addWidget(button)
        return button

    def _detected_text(self) -> str:
        if self.detected_cuda:
            return "NVIDIA driver" + (f": {', '.join(self.gpus)}" if self.gpus else "")
        return "no NVIDIA driver: CPU wheels"

    def set_step(self, step: str) -> None:
        """Explain what the step needs, and refresh the list (something may have been installed since)."""
        self.step = step
        if not self._fixed and not self.running:
            self.modules = deps.missing_for("all")
        needs = deps.missing_for(step) if step in deps.STEPS else self.modules
        title = STEP_TITLES.get(step, step)
        if self.modules:
            text = (
                f"<b>{title}</b> needs Python packages that QGIS's Python cannot import: "
                f"{', '.join(needs or self.modules)}. GeoSeg installs them with pip into its own folder in "
                "your QGIS profile (QGIS's Python itself is not changed). CUDA wheels are several GB; CPU "
                "wheels a few hundred MB."
            )
        else:
            text = "Every package GeoSeg needs can be imported: nothing to install."
        if self.python is None:
            text += (
                " <br><span style='color:#c00000'>QGIS's Python interpreter was not found, so pip cannot "
                "run. Install the packages with the command below from a terminal.</span>"
            )
        self.helpLabel.setText(text)
        self.missingList.clear()
        for m in self.modules:
            self.missingList.addItem(f"{m} — {deps.BY_MODULE[m].purpose}" if m in deps.BY_MODULE else m)
        self._update_command()

    # ---------------------------------------------------------------- command
    @property
    def cuda(self) -> bool:
        return self.variant.currentIndex() == 0

    def packages(self) -> list[str]:
        if self._packages is not None:
            return list(self._packages)
        return deps.pip_packages(self.modules, self.cuda, deps.current_numpy_version())

    def command(self) -> list[str]:
        index = [] if self._packages is not None else deps.index_args(self.cuda)
        return deps.pip_command(self.python or "python3", self.target, self.packages(), index, self.extra_args)

    def _update_command(self, *_: Any) -> None:
        self.commandView.setPlainText(shlex.join(self.command()))
        self._set_running(self.running)

    # ---------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        return self.process is not None

    def _set_running(self, running: bool) -> None:
        can = bool(self.modules) and self.python is not None and not self.succeeded
        self.installButton.setEnabled(can and not running)
        self.cancelButton.setEnabled(running)
        self.variant.setEnabled(not running and self._packages is None)

    def install(self) -> QProcess | None:
        """Start pip in a QProcess; its output arrives in `_read`, its end in `_finished`."""
        if self.running or not self.modules or self.python is None:
            return None
        cmd = self.command()
        os.makedirs(self.target, exist_ok=True)
        self.lines.clear()
        self.outputView.clear()
        self.exit_code = None
        self.cancelled = False
        self._buffer = b""
        self._append(f"$ {shlex.join(cmd)}")
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PIP_NO_INPUT", "1")
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        self.process = proc
        self._set_running(True)
        self._status("Installing… (QGIS stays usable; this may take several minutes)", None)
        proc.start(cmd[0], cmd[1:])
        return proc

    def cancel(self) -> None:
        if self.process is not None:
            self.cancelled = True
            self.process.kill()

    def _append(self, line: str) -> None:
        self.lines.append(line)
        self.outputView.appendPlainText(line)

    def _read(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput())
        *complete, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n")
        for raw in complete:
            self._append(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.FailedToStart and self.process is not None:
            self._append(f"could not start {self.command()[0]}: {self.process.errorString()}")
            self._done(-1)

    def _finished(self, code: int, _status: QProcess.ExitStatus) -> None:
        self._read()
        if self._buffer:
            self._append(self._buffer.decode("utf-8", errors="replace"))
            self._buffer = b""
        self._done(code)

    def _done(self, code: int) -> None:
        if self.process is None:
            return
        self.process.deleteLater()
        self.process = None
        self.exit_code = code
        if self.cancelled:
            self._status("Installation cancelled.", error=True)
        elif code != 0:
            hint = (
                " QGIS's Python has no pip: install it (Debian/Ubuntu: sudo apt install python3-pip)."
                if any("No module named pip" in line for line in self.lines)
                else ""
            )
            self._status(f"pip failed (exit status {code}); see its output above.{hint}", error=True)
        else:
            deps.activate(self.target)
            still = deps.missing(self.modules)
            self.succeeded = not still
            if still:
                self._status(
                    f"Installed, but {', '.join(still)} cannot be imported in this session: restart QGIS.", error=False
                )
            else:
                self._status(
                    f"Installed {', '.join(self.modules)} into {self.target}. "
                    f"{STEP_TITLES.get(self.step, self.step)} can be used now, no restart needed.",
                    error=False,
                )
        self._set_running(False)
        if self.succeeded:
            self.installed.emit()

    def _status(self, text: str, error: bool | None) -> None:
        self.statusLabel.setStyleSheet(ERROR_STYLE if error else SUCCESS_STYLE if error is False else "")
        self.statusLabel.setText(text)
        if error is not None and self.iface is not None:
            self.iface.messageBar().pushMessage("GeoSeg", text, Qgis.Critical if error else Qgis.Success, 10)

    def wait(self, timeout: float = 600.0, sleep: Callable[[float], None] = time.sleep) -> bool:
        """For scripts and tests: process events until pip has finished; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            QgsApplication.processEvents()
            sleep(0.01)
        return not self.running

    def closeEvent(self, event: Any) -> None:
        """Closing only hides the window; pip goes on and reports to the message bar."""
        super().closeEvent(event)
