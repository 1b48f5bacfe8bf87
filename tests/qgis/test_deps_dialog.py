"""The installer dialog runs pip for real (offline): a wheel written by hand is installed from a local
folder into a temporary target, pip's output streams into the dialog, and the package imports afterwards."""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys
import zipfile
from pathlib import Path

import pytest

from geoseg.core import deps
from geoseg.ui.deps_dialog import DepsDialog

NAME = "geoseg_tinypkg"


def make_wheel(folder: Path, name: str = NAME, version: str = "0.1") -> Path:
    """A minimal pure-python wheel: pkg/__init__.py and the three dist-info files pip needs."""
    files = {
        f"{name}/__init__.py": b"ANSWER = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record_name = f"{name}-{version}.dist-info/RECORD"
    rows = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    files[record_name] = ("\n".join(rows) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


@pytest.fixture()
def clean_import_path():
    saved = sys.path[:]
    yield
    sys.path[:] = saved
    sys.modules.pop(NAME, None)
    importlib.invalidate_caches()


def test_installs_a_local_wheel(qgis_app, tmp_path, clean_import_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    target = tmp_path / "target" / "py3"
    dlg = DepsDialog(
        None,
        modules=[NAME],
        packages=[NAME],
        target=str(target),
        python=sys.executable,
        extra_args=["--no-index", "--find-links", str(wheels)],
        cuda=False,
    )
    try:
        assert dlg.installButton.isEnabled() and not dlg.cancelButton.isEnabled()
        command = dlg.commandView.toPlainText()
        assert f"--target {target}" in command and "--no-index" in command and command.endswith(NAME)
        assert [dlg.missingList.item(i).text() for i in range(dlg.missingList.count())] == [NAME]
        with pytest.raises(ImportError):
            importlib.import_module(NAME)
        installed: list[bool] = []
        dlg.installed.connect(lambda: installed.append(True))
        assert dlg.install() is not None
        assert dlg.running and dlg.cancelButton.isEnabled() and not dlg.installButton.isEnabled()
        assert dlg.wait(120)
        text = dlg.outputView.toPlainText()
        assert dlg.exit_code == 0, text
        assert any(line.startswith("Processing ") and "geoseg_tinypkg" in line for line in dlg.lines), text
        assert any(line.startswith("Successfully installed geoseg_tinypkg") for line in dlg.lines), text
        assert all(line in text for line in dlg.lines)  # every line reached the dialog's view
        assert installed == [True] and dlg.succeeded
        assert "no restart needed" in dlg.statusLabel.text()
        assert not dlg.installButton.isEnabled()
        assert (target / NAME / "__init__.py").exists()
        assert sys.path[0] == str(target)
        assert importlib.import_module(NAME).ANSWER == 42  # without restarting
    finally:
        dlg.deleteLater()


def test_pip_failure_is_reported(qgis_app, tmp_path, clean_import_path):
    """No such package in the local index: pip's error is shown with its exit status, nothing is imported."""
    dlg = DepsDialog(
        None,
        modules=["geoseg_nothere"],
        packages=["geoseg_nothere"],
        target=str(tmp_path / "t"),
        python=sys.executable,
        extra_args=["--no-index", "--find-links", str(tmp_path)],
        cuda=False,
    )
    try:
        dlg.install()
        assert dlg.wait(120)
        assert dlg.exit_code not in (0, None) and not dlg.succeeded
        assert any("No matching distribution" in line for line in dlg.lines)
        assert "pip failed (exit status" in dlg.statusLabel.text() and dlg.installButton.isEnabled()
    finally:
        dlg.deleteLater()


def test_cancel_stops_pip(qgis_app, tmp_path, clean_import_path):
    """Cancel kills the process; the dialog says so and is ready to try again."""
    slow = tmp_path / "slow.py"
    slow.write_text("import sys, time\nprint('starting', flush=True)\ntime.sleep(60)\n")
    dlg = DepsDialog(
        None, modules=[NAME], packages=[NAME], target=str(tmp_path / "t"), python=sys.executable, cuda=False
    )
    try:
        dlg.command = lambda: [sys.executable, str(slow)]  # a pip that would take a minute
        dlg.install()
        while not dlg.lines[1:]:
            qgis_app.processEvents()
        assert dlg.lines[1] == "starting"
        dlg.cancel()
        assert dlg.wait(30)
        assert dlg.cancelled and "cancelled" in dlg.statusLabel.text() and dlg.installButton.isEnabled()
    finally:
        dlg.deleteLater()


def test_default_dialog_lists_what_geoseg_lacks(qgis_app, monkeypatch):
    """Without torch the default dialog lists it, pins numpy and picks wheels from the detected driver."""
    monkeypatch.setitem(sys.modules, "torch", None)
    dlg = DepsDialog(None, step="train", cuda=False)
    try:
        assert dlg.modules == ["torch"]
        assert dlg.missingList.count() == 1 and dlg.missingList.item(0).text().startswith("torch")
        assert "Train model" in dlg.helpLabel.text()
        command = dlg.commandView.toPlainText()
        assert "torch>=2.1" in command and f"numpy=={deps.current_numpy_version()}" in command
        assert deps.CPU_INDEX in command and dlg.variant.currentIndex() == 1
        dlg.variant.setCurrentIndex(0)  # the user picks CUDA wheels: the command follows
        assert deps.CPU_INDEX not in dlg.commandView.toPlainText()
        assert dlg.python is not None and dlg.targetLabel.text() == dlg.target
    finally:
        dlg.deleteLater()
