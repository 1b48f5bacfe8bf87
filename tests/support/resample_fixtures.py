"""Issue 17 (resampling): a blocky scene and a per-pixel model whose class follows the brightest
band, so that segmenting on another grid and warping back agrees with the direct result away from
class edges. No qgis imports (tests/core and tests/e2e both use it)."""

from __future__ import annotations

import json

import numpy as np
from osgeo import gdal

from tests.support.helpers import ORIGIN, UTM, srs

VALUES = [0, 4, 9]
BLOCK = 24  # pixels of one uniform block at 1 m


def card(pixel: float | None = 1.0, crs: int | None = UTM) -> dict:
    c = {
        "classes": [{"value": v, "name": f"k{v}", "color": f"#{v}0{v}0{v}0"} for v in VALUES],
        "bands": [1, 2, 3],
        "in_channels": 3,
        "chip_size": 32,
        "normalization": {"mean": [100.0, 100.0, 100.0], "std": [50.0, 50.0, 50.0]},
        "architecture": "custom",
    }
    if pixel:
        c["pixel_size"] = [pixel, pixel]
    if crs:
        c["crs"] = {"authid": f"EPSG:{crs}", "wkt": srs(crs).ExportToWkt()}
    return c


def brightest_band_model(path: str, c: dict) -> str:
    """ONNX: a 1×1 convolution, logit of class i = 4 · band i (standardised): the brightest band wins."""
    import torch

    from geoseg.core.card import CARD_KEY
    from geoseg.models.export import export_onnx

    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(4 * torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    export_onnx(conv.eval(), 3, path, metadata={CARD_KEY: json.dumps(c)})
    return path


def blocky_scene(path: str, metres: float, pixel: float, hole: bool = True, seed: int = 3) -> np.ndarray:
    """A UTM scene `metres` wide and high at `pixel` m: blocks of BLOCK m whose brightest band is random;
    nodata 0 (a hole of 3 blocks in the middle when `hole`). Returns the class index per pixel."""
    n = int(round(metres / pixel))
    rng = np.random.default_rng(seed)
    nb = -(-int(metres) // BLOCK)
    blocks = rng.integers(0, 3, (nb, nb))
    idx = (np.arange(n) * pixel // BLOCK).astype(int)
    cls = blocks[idx][:, idx]
    data = np.full((3, n, n), 60, np.uint8)
    for b in range(3):
        data[b][cls == b] = 180
    if hole:
        h0, h1 = int(n * 0.45), int(n * 0.55)
        data[:, h0:h1, h0:h1] = 0
    ds = gdal.GetDriverByName("GTiff").Create(path, n, n, 3, gdal.GDT_Byte, ["TILED=YES"])
    ds.SetGeoTransform((ORIGIN[0], pixel, 0, ORIGIN[1], 0, -pixel))
    ds.SetProjection(srs(UTM).ExportToWkt())
    for b in range(3):
        band = ds.GetRasterBand(b + 1)
        band.SetNoDataValue(0)
        band.WriteArray(data[b])
    ds = None
    return cls


def scene_pair(root, metres: int) -> tuple[str, str, str]:
    """(0.5 m scene, the same at 1 m, a 1 m UTM brightest-band model) in folder `root`."""
    half, one = str(root / "half.tif"), str(root / "one.tif")
    blocky_scene(half, metres, 0.5)
    blocky_scene(one, metres, 1.0)
    return half, one, brightest_band_model(str(root / "m1.onnx"), card(1.0))


def to_degrees(src: str, dst: str) -> str:
    """The same scene warped to EPSG:4326 (bilinear, nodata kept)."""
    gdal.Warp(dst, src, dstSRS="EPSG:4326", resampleAlg="bilinear")
    return dst


def away_from_edges(classes: np.ndarray, margin: int = 2) -> np.ndarray:
    """Pixels whose neighbourhood of `margin` pixels holds one class only (and no nodata)."""
    ok = classes != 255
    out = ok.copy()
    h, w = classes.shape
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            shifted = np.full_like(classes, 255)
            shifted[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = classes[
                max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
            ]
            out &= shifted == classes
    return out


def warp_like(src: str, like: str, dst: str) -> np.ndarray:
    """`src` (a class map) warped nearest-neighbour onto the grid of `like`."""
    g = gdal.Open(like)
    gt, w, h = g.GetGeoTransform(), g.RasterXSize, g.RasterYSize
    bounds = (gt[0], gt[3] + gt[5] * h, gt[0] + gt[1] * w, gt[3])
    gdal.Warp(dst, src, dstSRS=g.GetProjection(), outputBounds=bounds, width=w, height=h, resampleAlg="near")
    return gdal.Open(dst).ReadAsArray()
