"""The README's pictures can be regenerated, and `make package` builds an installable zip."""

from __future__ import annotations

import configparser
import importlib.util
import os
import subprocess
import zipfile

from qgis.PyQt.QtGui import QImage

from helpers import REPO


def distinct_colours(path: str, step: int = 7) -> int:
    img = QImage(path)
    return len({img.pixel(x, y) for x in range(0, img.width(), step) for y in range(0, img.height(), step)})


def test_screenshots_render(qgis_app, qgis_iface, tmp_path):
    spec = importlib.util.spec_from_file_location("screenshots", os.path.join(REPO, "scripts", "screenshots.py"))
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    paths = shots.render_all(str(tmp_path), qgis_iface)
    names = ["export_dialog.png", "chip_index.png", "train_dialog.png", "segment_dialog.png", "segment_result.png"]
    assert [os.path.basename(p) for p in paths] == names
    dialog, index, train, _, result = (QImage(p) for p in paths)
    assert result.width() == 776 and distinct_colours(paths[4]) > 6 and distinct_colours(paths[3]) > 20
    assert train.width() >= 600 and distinct_colours(paths[2]) > 20
    assert dialog.width() >= 400 and dialog.height() >= 500
    assert (index.width(), index.height()) == (768, 640)
    assert distinct_colours(paths[0]) > 20 and distinct_colours(paths[1]) > 200
    for name in names:  # the README shows the committed copies
        assert os.path.exists(os.path.join(REPO, "docs", "images", name))


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
    for required in ("geoseg/metadata.txt", "geoseg/__init__.py", "geoseg/plugin.py", "geoseg/resources.py",
                     "geoseg/core/chips.py", "geoseg/algorithms/exportchips.py", "geoseg/ui/export_dialog.py",
                     "geoseg/icons/geoseg.svg", "geoseg/LICENSE"):
        assert required in names
    banned = ("tests/", ".venv", "__pycache__", ".git", ".build", "benchmarks/", ".pyc", "demo_output")
    assert not [n for n in names if any(b in n for b in banned)]
    # the zipped plugin is importable on its own and exposes classFactory
    code = "import geoseg, geoseg.algorithms.provider; print(callable(geoseg.classFactory))"
    out = subprocess.run(["/usr/bin/python3", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=False)
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
