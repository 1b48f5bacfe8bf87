"""Deepness-style ONNX models built with onnx.helper (issue 14), an 8-bit RGBA orthophoto, and the
whole-image reference the tiled class map must equal (receptive field 1 pixel ≤ CROP)."""

from __future__ import annotations

import json

import numpy as np
from osgeo import gdal

from tests.support.helpers import ORIGIN, UTM, srs

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CLASSES = {"0": "background", "1": "building", "2": "road"}


def weights(k: int, c: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (k, c, 3, 3)).astype(np.float32), rng.normal(0, 0.3, k).astype(np.float32)


def deepness_model(
    path: str,
    kind: str = "softmax",
    size: int | None = 256,
    batch: int | str = "batch",
    meta: dict | None = None,
    channels: int = 3,
    outputs: int = 1,
    seed: int = 1,
) -> str:
    """A 3×3 convolution (pad 1) then Softmax over K=3 channels, or (kind "sigmoid") over one channel
    then Sigmoid ([B, 1, H, W]; "sigmoid3d": [B, H, W]), or "logits" (no activation). `size` None:
    dynamic height and width. `meta` values are JSON-encoded (bytes: written as they are); None: the
    standard Deepness keys. Extra `outputs` repeat the result under other names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = 1 if kind.startswith("sigmoid") else 3
    w, b = weights(k, channels, seed)
    h = size if size is not None else "height"
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, h, h])
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["z"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
    shape: list = [batch, k, h, h]
    if kind == "softmax":
        nodes.append(helper.make_node("Softmax", ["z"], ["out"], axis=1))
    elif kind.startswith("sigmoid"):
        nodes.append(helper.make_node("Sigmoid", ["z"], ["p"]))
        if kind == "sigmoid3d":
            nodes.append(helper.make_node("Squeeze", ["p", "axis1"], ["out"]))
            shape = [batch, h, h]
        else:
            nodes.append(helper.make_node("Identity", ["p"], ["out"]))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["out"]))
    outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)]
    for i in range(1, outputs):
        nodes.append(helper.make_node("Identity", ["out"], [f"out{i}"]))
        outs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, shape))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(nodes, "deepness_test", [inp], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is None:
        meta = {
            "model_type": "Segmentor",
            "class_names": {"0": "building"} if k == 1 else CLASSES,
            "resolution": 40,
            "tiles_size": size or 256,
            "tiles_overlap": 25,
            "standardization_mean": MEAN[:channels],
            "standardization_std": STD[:channels],
            "seg_thresh": 0.5,
            "seg_small_segment": 7,
        }
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value.decode() if isinstance(value, bytes) else json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def rgba_raster(
    path: str, width: int = 300, height: int = 280, hole: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """8-bit RGBA GeoTIFF (band 4 alpha, 0 inside `hole`); returns the [4, h, w] pixels."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (4, height, width)).astype(np.uint8)
    data[3] = 255
    if hole is not None:
        x, y, w, h = hole
        data[3, y : y + h, x : x + w] = 0
    ds = gdal.GetDriverByName("GTiff").Create(path, width, height, 4, gdal.GDT_Byte, ["PHOTOMETRIC=RGB", "ALPHA=YES"])
    ds.SetGeoTransform((ORIGIN[0], 0.4, 0, ORIGIN[1], 0, -0.4))
    ds.SetProjection(srs(UTM).ExportToWkt())
    for i in range(4):
        ds.GetRasterBand(i + 1).WriteArray(data[i])
    ds = None
    return data


def whole_image(data: np.ndarray, kind: str = "softmax", seed: int = 1, threshold: float = 0.5) -> np.ndarray:
    """The class map of the whole image at once: first 3 bands ×1/255, standardised, 3×3 conv with
    zero padding, arg-max (softmax) or p ≥ threshold (sigmoid); alpha 0 → 0 input and 255 output."""
    valid = data[3] > 0
    x = (data[:3].astype(np.float32) / 255.0 - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[
        :, None, None
    ]
    x[:, ~valid] = 0
    k = 1 if kind.startswith("sigmoid") else 3
    w, b = weights(k, 3, seed)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[1:]
    z = np.zeros((k, h, wd), np.float64) + b[:, None, None]
    for dy in range(3):
        for dx in range(3):
            z += np.einsum("kc,chw->khw", w[:, :, dy, dx], xp[:, dy : dy + h, dx : dx + wd])
    if k == 1:
        cls = (1.0 / (1.0 + np.exp(-z[0])) >= threshold).astype(np.uint8)
    else:
        cls = z.argmax(axis=0).astype(np.uint8)
    cls[~valid] = 255
    return cls
