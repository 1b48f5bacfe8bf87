"""`make demo` end to end (about 1.5 minutes): the whole workflow headless in a real QGIS."""

from __future__ import annotations

import json
import os
import subprocess

from qgis.core import QgsPalettedRasterRenderer, QgsProject
from qgis.PyQt.QtGui import QImage

from tests.support.helpers import REPO


def test_demo_runs_the_whole_workflow(qgis_app, tmp_path):
    out = tmp_path / "demo out"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", GDAL_PAM_ENABLED="NO")
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "demo.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validation mIoU" in proc.stdout and "held-out scene" in proc.stdout
    report = json.load(open(out / "heldout_report.json"))
    assert report["overall_accuracy"] > 0.8 and report["mean_iou"] > 0.6  # well above chance (5 classes)
    assert [c["name"] for c in report["classes"]] == ["water", "forest", "grassland", "built-up", "cropland"]
    preview = QImage(str(out / "preview.png"))
    assert preview.width() > 1000 and preview.height() > 300
    project = QgsProject()
    assert project.read(str(out / "geoseg_demo.qgz"))
    layers = {layer.name(): layer for layer in project.mapLayers().values()}
    assert len(layers) == 6 and all(layer.isValid() for layer in layers.values())
    assert isinstance(layers["held-out — GeoSeg classes"].renderer(), QgsPalettedRasterRenderer)
    # a second run into the same folder replaces only what the demo made; anything else is refused
    (tmp_path / "mine").mkdir()
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "demo.sh"), str(tmp_path / "mine")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode != 0 and "was not made by the demo" in proc.stderr
