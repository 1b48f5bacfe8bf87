"""Issue 13, family 3: results that were wrong with exit 0. The finite-output check of prediction
(core/predict.py FiniteOutputs), assess counting predicted values absent from the reference, and the
memory estimates made from the parameters before anything is allocated (core/memory.py)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from osgeo import gdal
from torch import nn

from geoseg.core.assess import AssessParams, PairCounts, assess
from geoseg.core.card import CARD_KEY
from geoseg.core.errors import GeoSegError
from geoseg.core.memory import export_bytes, require_memory, training_bytes
from geoseg.core.predict import SegmentParams, segment
from geoseg.core.stream import FiniteOutputs
from geoseg.models.export import export_onnx
from tests.support.helpers import CLASS_GT, UTM, make_raster, srs, write_classes
from tests.support.segment_fixtures import card


class PartlyNaN(nn.Module):
    """Logits NaN where the first normalised band is above 1, finite elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.where(x[:, :1] > 1.0, torch.full_like(x[:, :1], float("nan")), self.conv(x))


def test_some_nonfinite_pixels_become_nodata(tmp_path, caplog):
    raster = str(tmp_path / "in.tif")
    make_raster(raster, 64, 48, bands=3, dtype=gdal.GDT_Byte, nodata=None)
    model = str(tmp_path / "m.onnx")
    export_onnx(PartlyNaN().eval(), 3, model, sample_size=32, metadata={CARD_KEY: json.dumps(card())})
    out, probs = str(tmp_path / "c.tif"), str(tmp_path / "p.tif")
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        r = segment(SegmentParams(raster, model, out, probs, device="cpu"))
    band1 = gdal.Open(raster).ReadAsArray()[0].astype(np.float32)
    bad = (band1 - card()["normalization"]["mean"][0]) / card()["normalization"]["std"][0] > 1.0
    assert 0 < bad.sum() < bad.size
    classes = gdal.Open(out).ReadAsArray()
    np.testing.assert_array_equal(classes == 255, bad)
    p = gdal.Open(probs).ReadAsArray()
    assert np.isfinite(p).all() and (p[:, bad] == -1).all()
    message = f"NaN or infinite values for {int(bad.sum())} of {bad.size} pixels"
    assert any(message in w for w in r.warnings) and message in caplog.text


def test_all_nonfinite_is_refused_and_nothing_written(tmp_path):
    raster = str(tmp_path / "in.tif")
    make_raster(raster, 40, 40, bands=3, dtype=gdal.GDT_Byte, nodata=None)
    model = str(tmp_path / "m.onnx")
    net = nn.Conv2d(3, 3, 1)
    export_onnx(_Inf(net).eval(), 3, model, sample_size=32, metadata={CARD_KEY: json.dumps(card())})
    with pytest.raises(GeoSegError, match="MODEL: the model returned NaN or infinite values for every pixel"):
        segment(SegmentParams(raster, model, str(tmp_path / "out" / "c.tif"), None, device="cpu"))
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "m.onnx"]


class _Inf(nn.Module):
    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) + float("inf")


def test_finite_outputs_counts_only_valid_pixels():
    f = FiniteOutputs()
    tile = np.zeros((2, 2, 2), np.float32)
    tile[0, 0, 0] = np.nan  # valid pixel
    tile[1, 1, 1] = np.inf  # nodata pixel: not counted
    invalid = np.array([[False, False], [False, True]])
    np.testing.assert_array_equal(f.mask(tile, invalid), [[True, False], [False, False]])
    assert (f.valid, f.bad) == (3, 1) and "1 of 3 pixels" in f.verdict()
    assert FiniteOutputs().verdict() is None


# ------------------------------------------------------------------ assess
def _uint16(path: str, values: np.ndarray, nodata: int | None = None) -> str:
    ds = gdal.GetDriverByName("GTiff").Create(path, values.shape[1], values.shape[0], 1, gdal.GDT_UInt16)
    ds.SetGeoTransform(CLASS_GT)
    ds.SetProjection(srs(UTM).ExportToWkt())
    if nodata is not None:
        ds.GetRasterBand(1).SetNoDataValue(nodata)
    ds.GetRasterBand(1).WriteArray(values)
    ds = None
    return path


def test_predicted_values_absent_from_reference_are_errors(tmp_path):
    ref = np.ones((10, 10), np.uint8)
    ref[:, 5:] = 2
    pred = ref.astype(np.uint16)
    pred[0, :5] = 300  # 5 pixels, reference 1
    pred[1, :2] = 7  # 2 pixels of an in-range value the reference never holds
    pred[9, 9] = 65535  # prediction nodata: excluded
    r = assess(
        AssessParams(
            _uint16(str(tmp_path / "p.tif"), pred, 65535),
            str(tmp_path / "r.json"),
            write_classes(str(tmp_path / "ref.tif"), ref, None),
        )
    )
    report = json.load(open(r.report_path))
    assert report["values"] == [1, 2, 7, 300]
    assert report["predicted_values_not_in_reference"] == [{"value": 7, "pixels": 2}, {"value": 300, "pixels": 5}]
    assert r.pixels == 99 and r.overall_accuracy == pytest.approx(92 / 99)
    recall_1 = next(c for c in report["classes"] if c["value"] == 1)["recall"]
    assert recall_1 == pytest.approx(43 / 50)
    html = open(r.html_path, encoding="utf-8").read()
    assert "value 7: 2 pixels, value 300: 5 pixels" in html


def test_pair_counts_mix_dense_and_sparse():
    c = PairCounts()
    c.add(np.array([1, 1, 400, -3]), np.array([1, 300, 400, 2]))
    values, m = c.matrix()
    assert values == [-3, 1, 2, 300, 400]
    assert m.sum() == 4 and m[1, 1] == 1 and m[1, 3] == 1 and m[4, 4] == 1 and m[0, 2] == 1


def test_multiband_reference_refused(tmp_path):
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "ref.tif"), 10, 10, 2, gdal.GDT_Byte)
    ds.SetGeoTransform(CLASS_GT)
    ds = None
    pred = write_classes(str(tmp_path / "p.tif"), np.ones((10, 10), np.uint8), 255)
    with pytest.raises(GeoSegError, match="REFERENCE has 2 bands") as e:
        assess(AssessParams(pred, str(tmp_path / "r.json"), str(tmp_path / "ref.tif")))
    assert e.value.param == "REFERENCE"


def test_assess_names_only_its_parameters(tmp_path):
    pred = write_classes(str(tmp_path / "p.tif"), np.ones((10, 10), np.uint8), 255)
    with pytest.raises(GeoSegError) as e:
        assess(
            AssessParams(
                pred, str(tmp_path / "r.json"), reference_vector=str(tmp_path / "missing.gpkg"), class_field="cls"
            )
        )
    assert str(e.value).startswith("REFERENCE_VECTOR: ") and "LABELS" not in str(e.value)


# ------------------------------------------------------------------ memory estimates
def test_training_estimate_grows_with_width_and_refuses():
    small = training_bytes("unet", 3, 3, {"base_width": 4, "depth": 2}, 32)
    large = training_bytes("unet", 3, 3, {"base_width": 64, "depth": 2}, 32)
    assert 0 < small < large < 2e9
    huge = training_bytes("unet", 3, 3, {"base_width": 1000000}, 32)
    assert huge > 1e15
    with pytest.raises(GeoSegError, match=r"^MODEL_OPTIONS: x needs about \d+ GB of memory, more than the") as e:
        require_memory(huge, "x", "MODEL_OPTIONS", "Use a smaller model.")
    assert e.value.param == "MODEL_OPTIONS"


def test_export_estimate_and_budget():
    assert export_bytes(100000, 3, 1, 64, 6) > 1e12
    assert export_bytes(256, 12, 4, 10000, 6) < 1e9
    require_memory(export_bytes(256, 12, 4, 10000, 6), "x", "CHIP_SIZE", "")
    with pytest.raises(GeoSegError, match="needs about 2 MB of memory, more than the 1 MB memory budget"):
        require_memory(2e6, "x", "CHIP_SIZE", "", budget_mb=1.0)
