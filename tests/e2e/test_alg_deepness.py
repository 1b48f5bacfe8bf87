"""Issue 14 through scripts/qgis_process: a Deepness-format model on an 8-bit RGBA orthophoto equals
whole-image inference; a GeoSeg checkpoint exported with FORMAT 1 (Deepness)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from osgeo import gdal

from tests.support.deepness_models import deepness_model, rgba_raster, whole_image
from tests.support.helpers import qgis_process

HOLE = (40, 50, 15, 12)


@pytest.mark.parametrize("kind,batch", [("softmax", "batch"), ("sigmoid", 1)])
def test_qgis_process_deepness_model_on_rgba(tmp_path, kind, batch):
    raster = str(tmp_path / "ortho.tif")
    data = rgba_raster(raster, 300, 270, hole=HOLE)
    model = deepness_model(str(tmp_path / f"{kind}.onnx"), kind, batch=batch)
    out = str(tmp_path / "classes.tif")
    proc = qgis_process("run", "geoseg:segment", "--", f"INPUT={raster}", f"MODEL={model}", f"OUTPUT={out}", "DEVICE=1")
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    ds = gdal.Open(out)
    assert ds.GetGeoTransform() == gdal.Open(raster).GetGeoTransform()
    assert np.array_equal(ds.ReadAsArray(), whole_image(data, kind))


def test_qgis_process_chip_size_conflict(tmp_path):
    raster = str(tmp_path / "ortho.tif")
    rgba_raster(raster, 300, 270)
    model = deepness_model(str(tmp_path / "m.onnx"))
    proc = qgis_process(
        "run",
        "geoseg:segment",
        "--",
        f"INPUT={raster}",
        f"MODEL={model}",
        f"OUTPUT={tmp_path / 'c.tif'}",
        "CHIP_SIZE=128",
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "CHIP_SIZE 128: the model's input is fixed at 256 × 256 pixels" in text
    assert "Traceback" not in text and not os.path.exists(tmp_path / "c.tif")


def test_qgis_process_export_deepness_format(tmp_path):
    import torch

    from geoseg.core.card import CARD_KEY, ModelCard
    from geoseg.core.checkpoint import save_model
    from geoseg.models.registry import build_model
    from tests.support.helpers import make_raster

    torch.manual_seed(0)
    net = build_model("fcn", 3, 3, base_width=4)
    card = {
        "classes": [{"value": i, "name": f"c{i}", "color": c} for i, c in enumerate(("#000000", "#ff0000", "#00ff00"))],
        "bands": [1, 2, 3],
        "in_channels": 3,
        "chip_size": 32,
        "normalization": {"mean": [100.0] * 3, "std": [50.0] * 3},
        "architecture": "fcn",
        "architecture_options": {"base_width": 4},
    }
    pt = str(tmp_path / "m.pt")
    save_model(pt, net.state_dict(), ModelCard.from_dict(card))
    paths = {}
    for fmt in (0, 1):
        paths[fmt] = str(tmp_path / f"f{fmt}.onnx")
        proc = qgis_process("run", "geoseg:exportonnx", "--", f"MODEL={pt}", f"OUTPUT={paths[fmt]}", f"FORMAT={fmt}")
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    proto = onnx.load(paths[1])
    meta = {p.key for p in proto.metadata_props}
    assert {CARD_KEY, "model_type", "class_names", "tile_size", "tiles_size", "standardization_mean"} <= meta
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 32, 32]
    assert proto.graph.node[-1].op_type == "Softmax"
    assert json.loads(next(p.value for p in proto.metadata_props if p.key == "seg_thresh")) == 0.5
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 70, 50, bands=3, nodata=None)
    maps = []
    for fmt in (0, 1):
        out = str(tmp_path / f"c{fmt}.tif")
        proc = qgis_process("run", "geoseg:segment", "--", f"INPUT={raster}", f"MODEL={paths[fmt]}", f"OUTPUT={out}")
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
        maps.append(gdal.Open(out).ReadAsArray())
    assert np.array_equal(maps[0], maps[1])
