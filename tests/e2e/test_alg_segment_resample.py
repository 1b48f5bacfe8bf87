"""Issue 17, resampling through scripts/qgis_process: a UTM model on a degree raster, and a 0.5 m
raster read at a 1 m model's pixel size, written on either grid (OUTPUT_GRID)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from osgeo import gdal

from tests.support.helpers import qgis_process
from tests.support.resample_fixtures import away_from_edges, scene_pair, to_degrees, warp_like


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("resample_e2e")
    return (root, *scene_pair(root, 128))


def run(**params: object) -> int:
    """Run geoseg:segment; the number of tiles it segmented."""
    proc = qgis_process("run", "geoseg:segment", "--", *(f"{k}={v}" for k, v in params.items()))
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    return int(re.search(r"Segmented (\d+) tiles", proc.stdout).group(1))


def test_utm_model_on_a_degree_raster(scene, tmp_path):
    _, _, one, model = scene
    geo = to_degrees(one, str(tmp_path / "geo.tif"))
    out, utm = str(tmp_path / "geo_classes.tif"), str(tmp_path / "utm_classes.tif")
    run(INPUT=geo, MODEL=model, OUTPUT=out)
    run(INPUT=one, MODEL=model, OUTPUT=utm)
    g, o = gdal.Open(geo), gdal.Open(out)
    assert (o.RasterXSize, o.RasterYSize, o.GetGeoTransform()) == (g.RasterXSize, g.RasterYSize, g.GetGeoTransform())
    ref = warp_like(utm, out, str(tmp_path / "back.tif"))
    keep = away_from_edges(ref)
    assert keep.sum() > 0.5 * ref.size
    agree = (o.ReadAsArray()[keep] == ref[keep]).mean()
    assert agree >= 0.98, agree


@pytest.mark.parametrize("grid, size", [(0, 256), (1, 128)])
def test_half_metre_raster_with_a_metre_model(scene, tmp_path, grid, size):
    _, half, one, model = scene
    out = str(tmp_path / "c.tif")
    # the card's chip with the old default strides: tile counts then measure the grid read (issue 18's default
    # tiling would fit this local model's chip to each raster, one tile each)
    fixed = {"CHIP_SIZE": 32, "STRIDE_X": 16, "STRIDE_Y": 16, "CROP": 4}
    tiles = run(INPUT=half, MODEL=model, OUTPUT=out, OUTPUT_GRID=grid, **fixed)
    ds = gdal.Open(out)
    assert (ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform()[1]) == (size, size, 128 / size)
    # read at 1 m: as many tiles as the 1 m scene (a quarter of 0.5 m's), and the same map
    direct = str(tmp_path / "direct.tif")
    assert tiles == run(INPUT=one, MODEL=model, OUTPUT=direct, **fixed)
    assert tiles < run(INPUT=half, MODEL=model, OUTPUT=str(tmp_path / "own.tif"), RESOLUTION=1, **fixed) / 3
    ref = warp_like(direct, out, str(tmp_path / "ref.tif"))
    keep = away_from_edges(ref)
    assert (ds.ReadAsArray()[keep] == ref[keep]).mean() >= 0.99
    assert np.count_nonzero(ds.ReadAsArray() == 255) > 0  # the nodata hole survived
