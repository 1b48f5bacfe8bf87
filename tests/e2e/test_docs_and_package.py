"""`make package` builds an installable zip, and the README's parameter tables are current.

The pictures are regenerated and checked in real windows by tests/e2e/test_gui_xvfb.py."""

from __future__ import annotations

import configparser
import importlib.util
import os
import subprocess
import zipfile

from tests.support.helpers import REPO


def test_make_package(tmp_path):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "metadata.txt"))
    version = cfg["general"]["version"]
    subprocess.run(["make", "-s", "package"], cwd=REPO, check=True, capture_output=True)
    path = os.path.join(REPO, "dist", f"geoseg-{version}.zip")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        z.extractall(tmp_path)
    assert all(n.startswith("geoseg/") for n in names)
    for required in (
        "geoseg/metadata.txt",
        "geoseg/__init__.py",
        "geoseg/plugin.py",
        "geoseg/resources.py",
        "geoseg/core/chips.py",
        "geoseg/algorithms/exportchips.py",
        "geoseg/ui/export_dialog.py",
        "geoseg/icons/geoseg.svg",
        "geoseg/LICENSE",
        "geoseg/core/deps.py",
        "geoseg/ui/deps_dialog.py",
        "geoseg/ui/settings.py",
        "geoseg/adapter/layers.py",
        "geoseg/adapter/style.py",
    ):
        assert required in names
    banned = ("tests/", ".venv", "__pycache__", ".git", ".build", "benchmarks/", ".pyc", "demo_output")
    assert not [n for n in names if any(b in n for b in banned)]
    # the zipped plugin is importable on its own and exposes classFactory
    code = "import geoseg, geoseg.algorithms.provider; print(callable(geoseg.classFactory))"
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert out.stdout.strip() == "True", out.stderr


def test_readme_parameter_tables_are_current(qgis_app):
    spec = importlib.util.spec_from_file_location("paramdocs", os.path.join(REPO, "scripts", "paramdocs.py"))
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    text = open(docs.README, encoding="utf-8").read()
    algs = docs.algorithms()
    assert "<!-- params:exportchips -->" in text
    assert docs.render(text, algs) == text, "README parameter tables are stale: run `make docs`"
    assert "`CLASS_FIELD`" in docs.table(algs["exportchips"])
