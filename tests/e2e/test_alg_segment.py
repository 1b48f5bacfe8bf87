"""geoseg:segment through scripts/qgis_process (.pt and .onnx) and its result styling."""

from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsPalettedRasterRenderer, QgsProcessingContext, QgsProcessingFeedback, QgsRasterLayer

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.train import TrainParams, train
from tests.support.helpers import make_raster, qgis_process, standard_labels, tree_snapshot


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmodel")
    raster = str(root / "scene.tif")
    make_raster(raster, 150, 110, bands=3, hole=(40, 30, 12, 9))
    chips = str(root / "chips")
    export_chips(ExportParams(raster, standard_labels(str(root / "l.gpkg")), chips, class_field="cls", chip_size=32))
    r = train(
        TrainParams(
            chips, str(root / "m.pt"), epochs=1, batch_size=4, device="cpu", model_options={"base_width": 4, "depth": 2}
        )
    )
    return raster, r.model_path, r.onnx_path, r.card


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_qgis_process_segment(model, tmp_path, kind):
    raster, pt, onnx_path, card = model
    out = str(tmp_path / f"classes {kind}.tif")
    before = tree_snapshot(os.path.dirname(raster))
    proc = qgis_process(
        "run",
        "geoseg:segment",
        "--",
        f"INPUT={raster}",
        f"MODEL={pt if kind == 'pt' else onnx_path}",
        f"OUTPUT={out}",
        f"OUTPUT_PROBABILITIES={tmp_path / 'p.tif'}",
        "STRIDE_X=16",
        "STRIDE_Y=16",
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert ("torch" if kind == "pt" else "onnxruntime") in proc.stdout
    ds, src = gdal.Open(out), gdal.Open(raster)
    assert (ds.RasterXSize, ds.RasterYSize) == (150, 110) and ds.GetGeoTransform() == src.GetGeoTransform()
    classes = ds.ReadAsArray()
    assert set(np.unique(classes)) <= {c.value for c in card.classes} | {255}
    assert (classes[30:39, 40:52] == 255).all() and (classes != 255).sum() == 150 * 110 - 12 * 9
    assert gdal.Open(str(tmp_path / "p.tif")).RasterCount == card.num_classes
    assert tree_snapshot(os.path.dirname(raster)) == before


def test_qgis_process_segment_bad_input(model, tmp_path):
    _, pt, _, _ = model
    four = str(tmp_path / "four.tif")
    make_raster(four, 40, 40, bands=4)
    proc = qgis_process("run", "geoseg:segment", "--", f"INPUT={four}", f"MODEL={pt}", f"OUTPUT={tmp_path / 'o.tif'}")
    assert proc.returncode != 0
    assert "INPUT has 4 bands, but the model was trained on 3" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["four.tif"]


def test_result_is_styled_with_the_card(geoseg_provider, model, tmp_path):
    import processing

    from geoseg.algorithms.segment import ClassStyler

    raster, _, onnx_path, card = model
    res = processing.run("geoseg:segment", {"INPUT": raster, "MODEL": onnx_path, "OUTPUT": str(tmp_path / "c.tif")})
    layer = QgsRasterLayer(res["OUTPUT"], "classes")
    styler = ClassStyler([c.to_dict() for c in card.classes])
    styler.postProcessLayer(layer, QgsProcessingContext(), QgsProcessingFeedback())
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    got = [(c.value, c.color.name(), c.label) for c in renderer.classes()]
    assert got == [(c.value, c.color, c.name) for c in card.classes]


def test_memory_budget_halves_the_batch_and_says_so(geoseg_provider, model, tmp_path):
    """A budget that a batch of 8 tiles exceeds: the run halves the batch, tells the user in the
    log, and gives the same class map as an unconstrained run; BATCH_SIZE 0 picks a size itself."""
    import processing

    raster, _, onnx_path, _ = model
    free = processing.run(
        "geoseg:segment", {"INPUT": raster, "MODEL": onnx_path, "OUTPUT": str(tmp_path / "a.tif"), "BATCH_SIZE": 8}
    )
    from geoseg.core.backends import open_backend, read_model_card
    from geoseg.core.predict import tile_memory_bytes

    card = read_model_card(onnx_path)
    per_tile = tile_memory_bytes(open_backend(onnx_path, card, "onnxruntime", "cpu", 32), card, 32)
    feedback = QgsProcessingFeedback()
    messages: list[str] = []
    feedback.reportError = lambda msg, fatal=False: messages.append(msg)  # warnings arrive as pushWarning
    feedback.pushWarning = messages.append
    feedback.pushInfo = messages.append
    tight = processing.run(
        "geoseg:segment",
        {
            "INPUT": raster,
            "MODEL": onnx_path,
            "OUTPUT": str(tmp_path / "b.tif"),
            "BATCH_SIZE": 8,
            "MEMORY_BUDGET": 2.5 * per_tile / 1e6,
        },
        feedback=feedback,
    )
    assert any("retrying with batch size 4" in m for m in messages), messages
    assert any("retrying with batch size 2" in m for m in messages)
    assert any(m.endswith("batch size 2.") for m in messages)
    assert (gdal.Open(tight["OUTPUT"]).ReadAsArray() == gdal.Open(free["OUTPUT"]).ReadAsArray()).all()
    auto = processing.run(
        "geoseg:segment",
        {
            "INPUT": raster,
            "MODEL": onnx_path,
            "OUTPUT": str(tmp_path / "c.tif"),
            "BATCH_SIZE": 0,
            "MEMORY_BUDGET": 3.5 * per_tile / 1e6,
        },
    )
    assert (gdal.Open(auto["OUTPUT"]).ReadAsArray() == gdal.Open(free["OUTPUT"]).ReadAsArray()).all()
