"""A fresh QGIS profile with the zipped plugin installed, and real QGIS processes started on it.

Used by the packaging and no-torch tests: they check what a user gets after "Install from ZIP",
not the checkout the other tests import."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support.helpers import REPO

XVFB = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"]


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "metadata.txt"))
    return cfg["general"]["version"]


def build_zip() -> str:
    """`make package`, as a user would build it; returns the zip's path."""
    subprocess.run(["make", "-s", "package"], cwd=REPO, check=True, capture_output=True)
    return os.path.join(REPO, "dist", f"geoseg-{version()}.zip")


def install_profile(zip_path: str, root: Path) -> Path:
    """`root` becomes a QGIS config folder (QGIS_CUSTOM_CONFIG_PATH / --profiles-path) whose default
    profile has the zip unpacked in python/plugins and GeoSeg enabled. Returns the profile folder."""
    profile = root / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(plugins)
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\ngeoseg=true\n", encoding="utf-8")
    return profile


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's QGIS: no checkout on QGIS_PLUGINPATH or PYTHONPATH, no venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("QGIS_PLUGINPATH", "PYTHONPATH", "QGIS_CUSTOM_CONFIG_PATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.setdefault("XDG_RUNTIME_DIR", "/tmp/geoseg-xdg-runtime")
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
    env["GDAL_PAM_ENABLED"] = "NO"
    env.update(extra)
    return env


def need_xvfb() -> None:
    if shutil.which("xvfb-run") is None or shutil.which("qgis") is None:
        pytest.fail("needs xvfb-run and the qgis desktop application: `make setup` installs them")


def run_desktop_qgis(
    root: Path, code: str, out_json: Path, env: dict[str, str], timeout: int = 180
) -> tuple[dict, subprocess.CompletedProcess]:
    """Start the real QGIS desktop on the profiles under `root` in an X server (Xvfb); `code` runs once
    QGIS has loaded its plugins, writes its findings to `out_json` and quits QGIS."""
    script = root / "probe.py"
    script.write_text(code, encoding="utf-8")
    cmd = [*XVFB, "qgis", "--profiles-path", str(root), "--nologo", "--noversioncheck", "--code", str(script)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**env, "QT_QPA_PLATFORM": "xcb"}, check=False
    )
    assert out_json.exists(), (
        f"QGIS wrote no result (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n" f"{proc.stderr[-3000:]}"
    )
    return json.loads(out_json.read_text(encoding="utf-8")), proc


# Runs inside QGIS (--code): a frame that collects Python errors QGIS reports, runs BODY, writes OUT, quits.
DESKTOP_FRAME = """
import json, traceback
import qgis.utils
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface

OUT = {out!r}
result = {{"errors": [], "log": []}}

def _log(message, tag, level):
    result["log"].append([tag, message])
    if tag == "Python error" or "Traceback" in message:
        result["errors"].append(message)

QgsApplication.messageLog().messageReceived.connect(_log)

def _main():
    try:
{body}
    except Exception:
        result["errors"].append(traceback.format_exc())
    finally:
        with open(OUT, "w") as f:
            json.dump(result, f)
        iface.actionExit().trigger()

QTimer.singleShot(0, _main)
"""


def desktop_code(body: str, out: Path) -> str:
    indented = "\n".join("        " + line if line.strip() else "" for line in body.strip("\n").splitlines())
    return DESKTOP_FRAME.format(out=str(out), body=indented)
