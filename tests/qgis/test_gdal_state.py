"""GeoSeg leaves GDAL's exception mode as it found it: loading the plugin, running every
algorithm (also a failing run) and calling core directly change nothing for QGIS or other
plugins. Checked with the mode OFF (QGIS's default) and ON; gdal, ogr and osr separately.
The mechanism is core/gdalx.py; its docstring says what GDAL < 3.7 allows."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading

import pytest
from osgeo import gdal, ogr, osr
from qgis.core import QgsProcessingException

from geoseg.core import gdalx
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import GeoSegError
from geoseg.core.raster import open_raster
from tests.support.helpers import REPO, make_raster, standard_labels

MODULES = (gdal, ogr, osr)


def state() -> tuple[int, ...]:
    return tuple(m.GetUseExceptions() for m in MODULES)


def set_state(wanted: tuple[int, ...]) -> None:
    """On in gdal → ogr → osr order, off in reverse: GDAL 3.6 stacks the modules' error handlers."""
    for m, on in zip(MODULES, wanted, strict=True):
        if on and not m.GetUseExceptions():
            m.UseExceptions()
    for m, on in reversed(list(zip(MODULES, wanted, strict=True))):
        if not on and m.GetUseExceptions():
            m.DontUseExceptions()


@pytest.fixture(params=[(0, 0, 0), (1, 1, 1)], ids=["off", "on"])
def host(request):
    """The host's mode for the test (QGIS runs with it off); the previous one comes back after."""
    before = state()
    set_state(request.param)
    assert state() == request.param
    yield request.param
    set_state(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("gdalstate")
    raster = str(root / "r.tif")
    make_raster(raster, 96, 64, bands=3)
    labels = standard_labels(str(root / "l.gpkg"))
    chips = str(root / "chips")
    export_chips(ExportParams(raster, labels, chips, class_field="cls", chip_size=32, validation_fraction=0.25))
    return {"raster": raster, "labels": labels, "chips": chips}


def test_importing_the_plugin_changes_nothing():
    """A fresh interpreter: every module of the plugin imported, the mode still off."""
    modules = []
    for pkg in ("core", "models", "adapter", "algorithms", "ui"):
        modules += [
            f"geoseg.{pkg}.{f[:-3]}"
            for f in sorted(os.listdir(os.path.join(REPO, pkg)))
            if f.endswith(".py") and f not in ("__init__.py", "__main__.py")
        ]
    code = (
        "import importlib, json; from osgeo import gdal, ogr, osr\n"
        f"for m in {[*modules, 'geoseg.plugin']!r}: importlib.import_module(m)\n"
        "print(json.dumps([m.GetUseExceptions() for m in (gdal, ogr, osr)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, 0, 0]


def test_loading_the_plugin_changes_nothing(host, qgis_app, qgis_iface, qgis_processing):
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    if registry.providerById("geoseg") is not None:
        registry.removeProvider("geoseg")
    plugin = importlib.import_module("geoseg").classFactory(qgis_iface)
    plugin.initGui()
    assert state() == host
    plugin.unload()
    assert state() == host


def test_algorithms_change_nothing(host, geoseg_provider, data, tmp_path):
    import processing

    out = str(tmp_path)
    processing.run(
        "geoseg:exportchips",
        {
            "INPUT": data["raster"],
            "LABELS": data["labels"],
            "CLASS_FIELD": "cls",
            "CHIP_SIZE": 32,
            "OUTPUT_DIR": os.path.join(out, "chips"),
        },
    )
    assert state() == host, "exportchips"
    trained = processing.run(
        "geoseg:train",
        {
            "CHIPS": data["chips"],
            "OUTPUT_MODEL": os.path.join(out, "m.pt"),
            "EPOCHS": 1,
            "BATCH_SIZE": 4,
            "DEVICE": 1,
            "MODEL_OPTIONS": json.dumps({"base_width": 4, "depth": 2}),
        },
    )
    assert state() == host, "train"
    seg = processing.run(
        "geoseg:segment",
        {"INPUT": data["raster"], "MODEL": trained["OUTPUT_ONNX"], "OUTPUT": os.path.join(out, "c.tif")},
    )
    assert state() == host, "segment"
    processing.run(
        "geoseg:assess",
        {
            "PREDICTION": seg["OUTPUT"],
            "REFERENCE_VECTOR": data["labels"],
            "CLASS_FIELD": "cls",
            "OUTPUT_REPORT": os.path.join(out, "r.json"),
        },
    )
    assert state() == host, "assess"
    processing.run("geoseg:exportonnx", {"MODEL": trained["OUTPUT_MODEL"], "OUTPUT": os.path.join(out, "again.onnx")})
    assert state() == host, "exportonnx"


def test_failing_runs_change_nothing_and_keep_their_messages(host, geoseg_provider, data, tmp_path):
    import processing

    with pytest.raises(QgsProcessingException, match="has no chips.csv"):
        processing.run("geoseg:train", {"CHIPS": str(tmp_path), "OUTPUT_MODEL": str(tmp_path / "n.pt")})
    assert state() == host
    with pytest.raises(QgsProcessingException):
        processing.run(
            "geoseg:segment",
            {"INPUT": data["raster"], "MODEL": str(tmp_path / "missing.onnx"), "OUTPUT": str(tmp_path / "c.tif")},
        )
    assert state() == host
    # core relies on GDAL raising; with the host's mode off it still reports what went wrong
    with pytest.raises(GeoSegError, match="raster file not found"):
        open_raster(str(tmp_path / "missing.tif"))
    assert state() == host
    garbage = tmp_path / "garbage.gpkg"
    garbage.write_text("not a GeoPackage")
    with pytest.raises(GeoSegError, match="LABELS: OGR cannot open .* as a vector layer"):
        export_chips(
            ExportParams(data["raster"], str(garbage), str(tmp_path / "chips"), class_field="cls", chip_size=32)
        )
    assert state() == host
    with pytest.raises(GeoSegError, match="INPUT: raster file not found"):  # only GDAL's exception tells
        export_chips(
            ExportParams(
                str(tmp_path / "missing.tif"), data["labels"], str(tmp_path / "chips"), class_field="cls", chip_size=32
            )
        )
    assert state() == host


def test_concurrent_runs_do_not_switch_it_off_under_each_other(host):
    """Two overlapping scopes in two threads (two QgsTasks): the first to leave does not end the
    other's exceptions; the last restores the host's mode."""
    inside, release, seen = threading.Event(), threading.Event(), {}

    def other_run():
        with gdalx.gdal_exceptions():
            inside.set()
            release.wait(10)
            try:
                gdal.Open(str(os.path.join(REPO, "no such file.tif")))
                seen["raised"] = False
            except RuntimeError:
                seen["raised"] = True

    worker = threading.Thread(target=other_run)
    worker.start()
    inside.wait(10)
    with gdalx.gdal_exceptions():
        assert state() == (1, 1, 1)
    release.set()
    worker.join(10)
    assert seen == {"raised": True}
    assert state() == host
