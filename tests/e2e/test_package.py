"""`make package` builds a zip that installs into a FRESH QGIS profile: qgis_process lists the geoseg
algorithms from it, and the QGIS desktop loads, starts, unloads and restarts the plugin without errors.

Nothing here uses the checkout: the plugin comes from the zip, unpacked into a temporary profile."""

from __future__ import annotations

import configparser
import json
import os
import subprocess

import pytest

from tests.support.helpers import REPO
from tests.support.profile_helpers import (
    build_zip,
    clean_env,
    desktop_code,
    install_profile,
    need_xvfb,
    run_desktop_qgis,
)

ALGORITHMS = ("geoseg:assess", "geoseg:exportchips", "geoseg:exportonnx", "geoseg:segment", "geoseg:train")


@pytest.fixture(scope="module")
def profile_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("qgis-config")
    install_profile(build_zip(), root)
    return root


def test_metadata_is_complete():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "metadata.txt"), encoding="utf-8")
    meta = cfg["general"]
    for key in (
        "name",
        "qgisMinimumVersion",
        "description",
        "version",
        "author",
        "email",
        "about",
        "tracker",
        "repository",
        "homepage",
        "tags",
        "category",
        "icon",
        "changelog",
        "hasProcessingProvider",
    ):
        assert meta.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert meta["qgisMinimumVersion"] == "3.22" and meta["hasProcessingProvider"] == "yes"
    assert all(meta[k].startswith("https://") for k in ("tracker", "repository", "homepage"))
    assert os.path.exists(os.path.join(REPO, meta["icon"]))
    changelog = meta["changelog"]
    assert meta["version"] in changelog
    for topic in ("training", "segment", "assess", "reliability", "performance", "installer"):
        assert topic in changelog.lower(), f"changelog says nothing about {topic}"


def test_qgis_process_lists_the_algorithms_from_the_profile(profile_root):
    env = clean_env(QGIS_CUSTOM_CONFIG_PATH=str(profile_root), QT_QPA_PLATFORM="offscreen")
    plugins = subprocess.run(
        ["/usr/bin/qgis_process.bin", "plugins"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert plugins.returncode == 0, plugins.stderr
    assert "* geoseg" in plugins.stdout  # found in the profile's python/plugins and enabled
    listed = subprocess.run(
        ["/usr/bin/qgis_process.bin", "list"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert listed.returncode == 0, listed.stderr
    for alg in ALGORITHMS:
        assert alg in listed.stdout, listed.stdout[-2000:]


def test_desktop_qgis_loads_and_starts_the_zipped_plugin(profile_root):
    """The real QGIS desktop (under Xvfb) with the fresh profile: GeoSeg is loaded from the profile at
    startup, and unloads and loads again through qgis.utils without a Python error."""
    need_xvfb()
    out = profile_root / "desktop.json"
    body = """
import os
result["plugin_dir"] = os.path.dirname(__import__("geoseg").__file__)
result["active_at_start"] = "geoseg" in qgis.utils.active_plugins
result["menus"] = [a.text() for a in iface.mainWindow().menuBar().actions()]
result["providers"] = [a.id() for a in QgsApplication.processingRegistry().algorithms()
                       if a.provider() and a.provider().id() == "geoseg"]
result["unloaded"] = qgis.utils.unloadPlugin("geoseg")
result["loaded"] = qgis.utils.loadPlugin("geoseg")
result["started"] = qgis.utils.startPlugin("geoseg")
geo_menu = [a.menu() for a in iface.mainWindow().menuBar().actions() if a.menu() and
            a.menu().objectName() == "mGeoSegMenu"]
result["menu_actions"] = [a.text() for a in geo_menu[0].actions() if not a.isSeparator()] if geo_menu else []
import sys
result["heavy"] = [m for m in ("torch", "onnxruntime") if m in sys.modules]
"""
    result, proc = run_desktop_qgis(profile_root, desktop_code(body, out), out, clean_env())
    assert result["errors"] == [], result["errors"]
    assert result["plugin_dir"] == str(profile_root / "profiles" / "default" / "python" / "plugins" / "geoseg")
    assert result["active_at_start"] and "&GeoSeg" in result["menus"]
    assert sorted(result["providers"]) == list(ALGORITHMS)
    assert result["unloaded"] and result["loaded"] and result["started"]
    assert result["menu_actions"][:3] == ["Export training chips…", "Train model…", "Segment raster…"]
    assert result["heavy"] == []  # the plugin loaded without importing torch or onnxruntime
    assert json.dumps(result)  # plain data all the way
    assert proc.returncode == 0
