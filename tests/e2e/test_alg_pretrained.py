"""Issue 15 through scripts/qgis_process: UNet-ResNet34 trains from named weights (served by a
local HTTP server on 127.0.0.1, never the internet) and from a local file, with 3 and 4 bands;
its .pt and ONNX segment like any other model."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from osgeo import gdal

from geoseg.core.card import ModelCard
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.options import ENCODERS
from tests.support.helpers import make_raster, qgis_process, standard_labels
from tests.support.pretrained import file_server, write_weights

RESNET34 = str(ENCODERS.index("resnet34"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Chips with 3 and with 4 bands, their rasters, and random ResNet-34 RGB weights (torchvision layout)."""
    root = tmp_path_factory.mktemp("pretrained")
    out: dict[str, str] = {}
    for bands in (3, 4):
        raster = str(root / f"r{bands}.tif")
        make_raster(raster, 96, 64, bands=bands)
        out[f"raster{bands}"] = raster
        out[f"chips{bands}"] = str(root / f"chips{bands}")
        export_chips(
            ExportParams(
                raster,
                standard_labels(str(root / f"l{bands}.gpkg")),
                out[f"chips{bands}"],
                class_field="cls",
                chip_size=32,
                validation_fraction=0.25,
            )
        )
    out["weights"] = write_weights(root / "resnet34-test.pth", "resnet34", 3)
    return out


def train(chips: str, model: str, weights: str) -> str:
    proc = qgis_process(
        "run",
        "geoseg:train",
        "--",
        f"CHIPS={chips}",
        f"OUTPUT_MODEL={model}",
        "ARCHITECTURE=0",
        f"ENCODER={RESNET34}",
        f"ENCODER_WEIGHTS={weights}",
        "FREEZE_ENCODER_EPOCHS=1",
        "EPOCHS=1",
        "BATCH_SIZE=4",
        "DEVICE=1",
        'MODEL_OPTIONS={"base_width": 2}',
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_named_weights_from_the_local_server_3_and_4_bands(data, tmp_path, monkeypatch):
    body = open(data["weights"], "rb").read()
    digest = hashlib.sha256(body).hexdigest()
    table = tmp_path / "extra.json"
    entry = {
        "name": "test_resnet34",
        "encoder": "resnet34",
        "url": "https://example.invalid/models/resnet34-test.pth",
        "sha256": digest,
        "bands": ["red", "green", "blue"],
        "scaling": "test",
        "licence": "test",
        "source": "test",
    }
    table.write_text(json.dumps([entry]))
    cache = tmp_path / "cache"
    with file_server() as (handler, base):
        handler.files["resnet34-test.pth"] = body
        monkeypatch.setenv("GEOSEG_WEIGHTS_BASE_URL", base)
        monkeypatch.setenv("GEOSEG_WEIGHTS_EXTRA", str(table))
        monkeypatch.setenv("GEOSEG_CACHE", str(cache))
        for bands in (3, 4):
            model = str(tmp_path / f"m{bands}.pt")
            train(data[f"chips{bands}"], model, "test_resnet34")
            card = ModelCard.from_json(torch.load(model, weights_only=True)["card"])
            assert card.encoder is not None and card.encoder.name == "resnet34"
            assert (card.encoder.weights, card.encoder.weights_sha256) == ("test_resnet34", digest)
            assert card.architecture_options and card.architecture_options["encoder"] == "resnet34"
            assert ("3 → 4 bands" in (card.encoder.first_conv or "")) == (bands == 4)
        assert handler.hits == ["resnet34-test.pth"]  # downloaded once, then from the cache
    assert os.listdir(cache / "weights") == ["resnet34-test.pth"]


def test_local_file_trains_with_3_bands_without_adaptation(data, tmp_path):
    model = str(tmp_path / "m3.pt")
    train(data["chips3"], model, data["weights"])
    card = ModelCard.from_json(torch.load(model, weights_only=True)["card"])
    assert card.encoder is not None and card.encoder.weights == "resnet34-test.pth"
    assert "→" not in (card.encoder.first_conv or "")  # RGB weights on 3 bands: used as they are


def test_local_file_trains_and_the_pt_and_onnx_segment(data, tmp_path):
    model = str(tmp_path / "m.pt")
    train(data["chips4"], model, data["weights"])
    card = ModelCard.from_json(torch.load(model, weights_only=True)["card"])
    assert card.encoder is not None and card.encoder.weights == "resnet34-test.pth"
    maps = []
    for path in (model, model[:-3] + ".onnx"):
        out = str(tmp_path / f"{os.path.basename(path)}.tif")
        proc = qgis_process("run", "geoseg:segment", "--", f"INPUT={data['raster4']}", f"MODEL={path}", f"OUTPUT={out}")
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
        ds = gdal.Open(out)
        assert (ds.RasterXSize, ds.RasterYSize) == (96, 64)
        maps.append(ds.GetRasterBand(1).ReadAsArray())
    values = {c.value for c in card.classes}
    assert set(map(int, maps[0].ravel())) <= values | {255}
    agree = (maps[0] == maps[1]).mean()
    assert agree > 0.99, agree  # torch and onnxruntime give the same map


def test_offline_named_weights_fail_with_the_file_to_fetch(data, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSEG_WEIGHTS_BASE_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("GEOSEG_CACHE", str(tmp_path / "cache"))
    proc = qgis_process(
        "run",
        "geoseg:train",
        "--",
        f"CHIPS={data['chips3']}",
        f"OUTPUT_MODEL={tmp_path / 'out' / 'm.pt'}",
        f"ENCODER={RESNET34}",
        "ENCODER_WEIGHTS=resnet34_imagenet",
        "EPOCHS=1",
        "DEVICE=1",
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert re.search(r"offline\?.*resnet34-b627a593\.pth.*download\.pytorch\.org", text), text[-1500:]
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "cache" / "weights")
