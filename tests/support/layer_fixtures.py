"""Non-GDAL raster layers for the segment tests (issue 17): a QGIS virtual raster over a GeoTIFF and a
one-band model (QGIS 3.22's virtualraster provider computes one band only)."""

from __future__ import annotations

import json

import numpy as np
from osgeo import gdal

from tests.support.helpers import ORIGIN, make_raster

W, H = 160, 120  # scenes of 2 m pixels in EPSG:32633 at helpers.ORIGIN, like segment_fixtures.card()


def virtual_layer(raster: str, name: str = "virtual"):
    """QGIS's raster-calculator provider over band 1 of `raster` (EPSG:32633), on its grid."""
    from qgis.core import QgsRasterLayer

    ds = gdal.Open(raster)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    extent = f"{x0!r},{y0 + ds.RasterYSize * dy!r},{x0 + ds.RasterXSize * dx!r},{y0!r}"
    uri = (
        f"?crs=EPSG:32633&extent={extent}&width={ds.RasterXSize}&height={ds.RasterYSize}"
        f"&formula=%22scene@1%22&scene:uri={raster}&scene:provider=gdal"
    )
    layer = QgsRasterLayer(uri, name, "virtualraster")
    assert layer.isValid() and layer.providerType() == "virtualraster"
    return layer


def one_band_scene(folder: str) -> tuple[str, str]:
    """A one-band Byte scene (W × H) and a one-band ONNX model with a GeoSeg card (2 m, EPSG:32633): a
    3 × 3 mean, then dark / middle / bright, so that every class occurs."""
    import torch
    from torch import nn

    from geoseg.core.card import CARD_KEY
    from geoseg.models.export import export_onnx
    from tests.support.segment_fixtures import card

    raster, model = f"{folder}/band1.tif", f"{folder}/oneband.onnx"
    make_raster(raster, W, H, bands=1, dtype=gdal.GDT_Byte, nodata=None)
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 3, 1)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1 / 9)
        net[0].bias.zero_()
        net[1].weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1))
        net[1].bias.copy_(torch.tensor([0.0, 0.2, 0.0]))
    c = card() | {"bands": [1], "in_channels": 1, "normalization": {"mean": [125.0], "std": [60.0]}}
    export_onnx(net, 1, model, sample_size=32, metadata={CARD_KEY: json.dumps(c)})
    return raster, model


def window(x0: int, y0: int, cols: int, rows: int) -> str:
    """EXTENT of scene pixels [x0, x0+cols) × [y0, y0+rows), on pixel edges."""
    left, top = ORIGIN[0] + 2.0 * x0, ORIGIN[1] - 2.0 * y0
    return f"{left!r},{left + 2.0 * cols!r},{top - 2.0 * rows!r},{top!r} [EPSG:32633]"


def classes(path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()
