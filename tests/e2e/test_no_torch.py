"""With torch, onnx and onnxruntime hidden from the import system, QGIS starts, the zipped plugin loads,
Train offers the installer (listing what is missing) and geoseg:train says what to install.

The child is the real QGIS desktop (under Xvfb) on a fresh profile. A sitecustomize on PYTHONPATH puts a
sys.meta_path finder first that raises ImportError for the hidden packages; the venv's site-packages
(which HAS torch) is on PYTHONPATH too, so the test proves the hiding, not an accident of the machine."""

from __future__ import annotations

import sysconfig

import pytest

from tests.support.profile_helpers import (
    build_zip,
    clean_env,
    desktop_code,
    install_profile,
    need_xvfb,
    run_desktop_qgis,
)

HIDDEN = ("torch", "onnx", "onnxruntime", "onnxscript")
BLOCKER = f'''
import sys


class GeoSegHideDeepLearning:
    """Test import hook: the deep-learning stack is not installed."""

    HIDDEN = {HIDDEN!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.HIDDEN:
            raise ImportError(f"No module named {{name!r}} (hidden by the GeoSeg no-torch test)")
        return None


sys.meta_path.insert(0, GeoSegHideDeepLearning())
'''

BODY = """
import os, sys
from qgis.core import QgsProcessingFeedback
result["blocker"] = type(sys.meta_path[0]).__name__
result["torch_on_path"] = any(os.path.isdir(os.path.join(p, "torch")) for p in sys.path)
try:
    import torch  # noqa: F401
    result["torch_import"] = "imported"
except ImportError as e:
    result["torch_import"] = str(e)
result["active"] = "geoseg" in qgis.utils.active_plugins
plugin = qgis.utils.plugins["geoseg"]
menu = [a.menu() for a in iface.mainWindow().menuBar().actions()
        if a.menu() and a.menu().objectName() == "mGeoSegMenu"][0]
[a for a in menu.actions() if a.text() == "Train model…"][0].trigger()
QgsApplication.processEvents()
dlg = plugin.dialogs.get("deps")
result["installer_visible"] = dlg is not None and dlg.isVisible()
result["train_dialog_opened"] = "train" in plugin.dialogs
result["installer_title"] = dlg.windowTitle()
result["missing"] = [dlg.missingList.item(i).text().split(" ")[0] for i in range(dlg.missingList.count())]
result["help"] = dlg.helpLabel.text()
result["command"] = dlg.commandView.toPlainText()
result["install_enabled"] = dlg.installButton.isEnabled()


class Feedback(QgsProcessingFeedback):
    errors = []

    def reportError(self, error, fatalError=False):
        self.errors.append(error)


import processing
from qgis.core import QgsProcessingException
feedback = Feedback()
try:
    processing.run("geoseg:train", {"CHIPS": CHIPS, "OUTPUT_MODEL": os.path.join(CHIPS, "m.pt")}, feedback=feedback)
    result["processing"] = "ran"
except QgsProcessingException as e:
    result["processing"] = str(e)
result["processing_errors"] = feedback.errors
result["model_written"] = os.path.exists(os.path.join(CHIPS, "m.pt"))
"""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    need_xvfb()
    root = tmp_path_factory.mktemp("no-torch")
    install_profile(build_zip(), root)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    chips = root / "chips"
    chips.mkdir()
    out = root / "result.json"
    venv_site = sysconfig.get_paths()["purelib"]  # holds torch: only the hook hides it
    body = f"CHIPS = {str(chips)!r}\n" + BODY
    result, _ = run_desktop_qgis(root, desktop_code(body, out), out, clean_env(PYTHONPATH=f"{site}:{venv_site}"))
    return result


def test_qgis_starts_and_the_plugin_loads_without_torch(outcome):
    assert outcome["blocker"] == "GeoSegHideDeepLearning" and outcome["torch_on_path"]
    assert "hidden by the GeoSeg no-torch test" in outcome["torch_import"]
    assert outcome["active"]
    assert outcome["errors"] == []


def test_train_offers_the_installer(outcome):
    assert outcome["installer_visible"] and not outcome["train_dialog_opened"]
    assert outcome["installer_title"] == "GeoSeg — Install dependencies"
    assert sorted(outcome["missing"]) == sorted(HIDDEN)
    assert "Train model" in outcome["help"] and "torch" in outcome["help"]
    command = outcome["command"]
    assert " -m pip install " in command and "torch>=2.1" in command and "onnxruntime" in command
    assert "geoseg-deps/py3." in command  # into the fresh profile's own folder
    assert command.startswith("/usr/bin/python3")  # QGIS's own interpreter, not whatever is first on the PATH
    assert outcome["install_enabled"]


def test_processing_reports_the_missing_dependency(outcome):
    message = " ".join([outcome["processing"], *outcome["processing_errors"]])
    assert "GeoSeg needs torch" in message and "Install dependencies" in message, message
    assert "Traceback" not in message
    assert not outcome["model_written"]
