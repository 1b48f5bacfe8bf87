"""Issue 14: Deepness-format and bare ONNX models in segment, and GeoSeg models exported for Deepness."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from osgeo import gdal

from geoseg.core.backends import read_model
from geoseg.core.card import CARD_KEY, ModelCard
from geoseg.core.errors import GeoSegError
from geoseg.core.foreign import ASSUMED, DEEPNESS, deepness_card, deepness_metadata, read_graph
from geoseg.core.predict import SegmentParams, segment
from tests.support.deepness_models import CLASSES, deepness_model, rgba_raster, whole_image

pytestmark = pytest.mark.core
HOLE = (50, 60, 20, 10)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("deepness")
    raster = str(d / "rgba.tif")
    return raster, rgba_raster(raster, hole=HOLE), d


def run(raster, model, out, **kw):
    r = segment(SegmentParams(raster, str(model), str(out), device="cpu", **kw))
    return r, gdal.Open(r.output_path).ReadAsArray()


def test_card_derived_from_deepness_metadata(tmp_path):
    om = read_model(deepness_model(str(tmp_path / "m.onnx")))
    c = om.card
    assert [(k.value, k.name) for k in c.classes] == [(0, "background"), (1, "building"), (2, "road")]
    assert c.classes[0].color == "#000000" and len({k.color for k in c.classes}) == 3
    assert list(c.bands) == [1, 2, 3] and c.chip_size == 256 and c.pixel_size == (0.4, 0.4)
    assert np.allclose(c.normalization.mean, [0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert np.allclose(c.normalization.std, [0.229 * 255, 0.224 * 255, 0.225 * 255])
    assert c.recommended is not None and c.recommended.crop == 32 and c.recommended.stride == 192
    assert om.provenance["classes"].startswith(DEEPNESS) and om.provenance["bands"].startswith(ASSUMED)
    assert om.io.fixed_size == 256 and om.io.activation == "softmax" and om.io.threshold == 0.5
    assert any("seg_small_segment 7" in n for n in om.notes)


@pytest.mark.parametrize("kind,batch", [("softmax", "batch"), ("softmax", 1), ("sigmoid", 1), ("sigmoid3d", "n")])
def test_rgba_orthophoto_equals_whole_image(scene, tmp_path, kind, batch):
    raster, data, _ = scene
    model = deepness_model(str(tmp_path / "m.onnx"), kind, batch=batch)
    r, got = run(raster, model, tmp_path / "c.tif", probabilities_path=str(tmp_path / "p.tif"), batch_size=3)
    assert np.array_equal(got, whole_image(data, kind))
    assert r.final_batch_size == (1 if batch == 1 else 3)
    probs = gdal.Open(str(tmp_path / "p.tif")).ReadAsArray()
    assert probs.shape[0] == (2 if kind.startswith("sigmoid") else 3)
    ok = got != 255
    assert np.allclose(probs[:, ok].sum(axis=0), 1, atol=1e-5)  # the model's probabilities, not re-softmaxed


def test_seg_thresh_only_when_asked(scene, tmp_path):
    raster, data, _ = scene
    meta = {"model_type": "Segmentor", "class_names": {"0": "building"}, "seg_thresh": 0.9}
    meta |= {"standardization_mean": [0.485, 0.456, 0.406], "standardization_std": [0.229, 0.224, 0.225]}
    model = deepness_model(str(tmp_path / "m.onnx"), "sigmoid", meta=meta)
    _, plain = run(raster, model, tmp_path / "a.tif")
    _, strict = run(raster, model, tmp_path / "b.tif", model_threshold=True)
    assert np.array_equal(plain, whole_image(data, "sigmoid")) and np.array_equal(
        strict, whole_image(data, "sigmoid", threshold=0.9)
    )
    assert (strict == 1).sum() < (plain == 1).sum()


def test_output_selector(scene, tmp_path):
    raster, data, _ = scene
    model = deepness_model(str(tmp_path / "m.onnx"), outputs=2)
    _, got = run(raster, model, tmp_path / "c.tif", output_index=1)
    assert np.array_equal(got, whole_image(data))
    with pytest.raises(GeoSegError, match=r"OUTPUT_INDEX 2: the model has 2 output\(s\): 0 out, 1 out1"):
        read_model(model, output=2)


def test_bare_model_with_card_file(scene, tmp_path):
    raster, data, _ = scene
    model = deepness_model(str(tmp_path / "bare.onnx"), "logits", size=None, meta={})
    with pytest.raises(GeoSegError, match="carries no GeoSeg model card .* give CARD a JSON file") as e:
        read_model(model)
    example = json.loads(str(e.value).split("e.g. ", 1)[1])
    assert example["in_channels"] == 3 and len(example["classes"]) == 3
    card = {
        "classes": [
            {"value": v, "name": n, "color": c}
            for v, n, c in ((0, "a", "#000000"), (4, "b", "#ff0000"), (9, "c", "#00ff00"))
        ],
        "bands": [1, 2, 3],
        "in_channels": 3,
        "chip_size": 64,
        "normalization": {
            "mean": [m * 255 for m in (0.485, 0.456, 0.406)],
            "std": [s * 255 for s in (0.229, 0.224, 0.225)],
        },
    }
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    r, got = run(raster, model, tmp_path / "c.tif", card_path=str(path), crop=4, stride_x=32, stride_y=32)
    ref = whole_image(data)
    assert np.array_equal(got, np.where(ref == 255, 255, np.array([0, 4, 9, 255], np.uint8)[np.minimum(ref, 3)]))


def test_fixed_input_forces_chip_size(scene, tmp_path):
    raster, _, _ = scene
    model = deepness_model(str(tmp_path / "m.onnx"))
    with pytest.raises(GeoSegError, match="CHIP_SIZE 128: the model's input is fixed at 256 × 256 pixels"):
        run(raster, model, tmp_path / "c.tif", chip_size=128)


@pytest.mark.parametrize(
    "meta,message",
    [
        ({"model_type": "Segmentor", "class_names": b"{building"}, "class_names is not JSON"),
        ({"model_type": "Segmentor", "class_names": ["a", "b"]}, "class_names must be an object"),
        ({"model_type": "Segmentor", "class_names": {"0": "a", "2": "b", "3": "c"}}, "consecutive channels"),
        ({"model_type": "Segmentor", "class_names": {"0": "a", "1": "b"}}, "lists 2 classes, but output 0 has 3"),
        ({"model_type": "Detector", "class_names": CLASSES}, "Deepness 'Detector' model"),
        ({"class_names": CLASSES, "standardization_mean": [0.5, 0.5]}, "only one of standardization"),
        ({"class_names": CLASSES, "standardization_mean": [0.5] * 2, "standardization_std": [1] * 2}, "list of 3"),
        ({"class_names": CLASSES, "resolution": "40cm"}, "resolution must be a positive number"),
    ],
)
def test_malformed_metadata(tmp_path, meta, message):
    with pytest.raises(GeoSegError, match=message):
        read_model(deepness_model(str(tmp_path / "m.onnx"), meta=meta))


def test_card_file_errors(tmp_path):
    model = deepness_model(str(tmp_path / "bare.onnx"), "logits", meta={})
    with pytest.raises(GeoSegError, match="CARD: file not found") as e:
        read_model(model, str(tmp_path / "none.json"))
    assert e.value.param == "CARD"
    bad = tmp_path / "bad.json"
    bad.write_text('{"classes": []}')
    with pytest.raises(GeoSegError, match="CARD: card field classes must be"):
        read_model(model, str(bad))


def test_export_for_deepness_reads_back_to_the_same_class_map(tmp_path):
    """A GeoSeg model exported as Deepness: fixed H=W, dynamic batch, probabilities, Deepness's keys; the
    Deepness reader alone gives the same class map as the GeoSeg-format file."""
    from geoseg.core.checkpoint import save_onnx
    from tests.support.helpers import make_raster

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(3, 3, 3, padding=1))
    card = ModelCard.from_dict(
        {
            "classes": [
                {"value": i, "name": n, "color": c}
                for i, (n, c) in enumerate((("bg", "#000000"), ("a", "#ff0000"), ("b", "#00ff00")))
            ],
            "bands": [1, 2, 3],
            "in_channels": 3,
            "chip_size": 32,
            "normalization": {"mean": [1000.0, 2000.0, 3000.0], "std": [500.0, 600.0, 700.0]},
            "recommended": {"crop": 4, "stride": 24},
            "pixel_size": [2.0, 2.0],
            "crs": {"wkt": gdal.osr.SpatialReference(gdal.osr.GetUserInputAsWKT("EPSG:32633")).ExportToWkt()},
        }
    )
    geo, deep = str(tmp_path / "g.onnx"), str(tmp_path / "d.onnx")
    save_onnx(geo, net, card, "OUTPUT")
    save_onnx(deep, net, card, "OUTPUT", fmt="deepness")
    proto = onnx.load(deep)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert (
        CARD_KEY in meta
        and meta["model_type"] == "Segmentor"
        and meta["class_names"] == {"0": "bg", "1": "a", "2": "b"}
    )
    assert meta["resolution"] == 200 and meta["tile_size"] == meta["tiles_size"] == 32 and meta["tiles_overlap"] == 25
    assert np.allclose(meta["standardization_mean"], [1000 / 255, 2000 / 255, 3000 / 255]) and meta["seg_thresh"] == 0.5
    dims = [
        [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in (proto.graph.input[0], proto.graph.output[0])
    ]
    assert dims[0][1:] == [3, 32, 32] and isinstance(dims[0][0], str) and dims[1][1:] == [3, 32, 32]
    # GeoSeg's Deepness reader alone (the geoseg card removed)
    del proto.metadata_props[[p.key for p in proto.metadata_props].index(CARD_KEY)]
    foreign = str(tmp_path / "deepness_only.onnx")
    onnx.save(proto, foreign)
    derived = deepness_card(read_graph(foreign))
    assert np.allclose(derived.card.normalization.mean, card.normalization.mean)
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 70, 50, bands=3, nodata=None)
    maps = [
        run(raster, m, tmp_path / f"{i}.tif", stride_x=24, stride_y=24, crop=4)[1]
        for i, m in enumerate((geo, deep, foreign))
    ]
    assert np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], maps[2])


def test_two_class_export_is_one_sigmoid_channel(tmp_path):
    from geoseg.core.checkpoint import save_onnx
    from tests.support.helpers import make_raster

    torch.manual_seed(1)
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    card = ModelCard.from_dict(
        {
            "classes": [
                {"value": 0, "name": "background", "color": "#000000"},
                {"value": 1, "name": "roof", "color": "#ff0000"},
            ],
            "bands": [1, 2, 3],
            "in_channels": 3,
            "chip_size": 32,
            "normalization": {"mean": [30000.0] * 3, "std": [15000.0] * 3},
        }
    )
    geo, deep = str(tmp_path / "g.onnx"), str(tmp_path / "d.onnx")
    save_onnx(geo, net, card, "OUTPUT")
    save_onnx(deep, net, card, "OUTPUT", fmt="deepness")
    out = onnx.load(deep).graph.output[0]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim][1:] == [1, 32, 32]
    assert "resolution" not in {p.key for p in onnx.load(deep).metadata_props}  # no metric pixel size in the card
    assert json.loads(deepness_metadata(card)["class_names"]) == {"0": "background", "1": "roof"}
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 60, 45, bands=3, nodata=None)
    a = run(raster, geo, tmp_path / "a.tif", stride_x=24, stride_y=24, crop=4)[1]
    b = run(raster, deep, tmp_path / "b.tif", stride_x=24, stride_y=24, crop=4)[1]
    assert np.array_equal(a, b) and set(np.unique(a)) <= {0, 1}
