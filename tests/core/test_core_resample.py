"""Issue 17, resampling: the working grid (RESOLUTION), reading through a warped VRT, and the class
map written back onto the input's grid (OUTPUT_GRID), nodata carried through both warps."""

from __future__ import annotations

import os

import pytest
from osgeo import gdal

from geoseg.core.card import ModelCard
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.predict import SegmentParams, segment
from geoseg.core.raster import category_names, open_raster, raster_info
from geoseg.core.resample import plan_grid, utm_zone
from tests.support.helpers import make_raster
from tests.support.resample_fixtures import away_from_edges, card, scene_pair, to_degrees, warp_like


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("resample")
    return (root, *scene_pair(root, 96))


def info(path):
    return raster_info(open_raster(path), path)


def test_plan_says_what_it_reads(scenes):
    _, half, one, _ = scenes
    c = ModelCard.from_dict(card(1.0))
    plan = plan_grid(c, info(half))
    assert plan.warp and plan.pixel_size == (1.0, 1.0)
    assert "the model expects 1 m" in plan.message and "this raster is 0.5 m" in plan.message
    assert "GeoSeg will read it at 1 m" in plan.message
    assert not plan_grid(c, info(one)).warp
    assert not plan_grid(c, info(half), "raster").warp
    assert plan_grid(c, info(one), "size", 2.0).pixel_size == (2.0, 2.0)
    with pytest.raises(GeoSegError, match="PIXEL_SIZE must be above 0"):
        plan_grid(c, info(one), "size", 0.0)
    bare = plan_grid(ModelCard.from_dict(card(None, None)), info(half))
    assert not bare.warp and "gives no pixel size" in bare.message


def test_degree_raster_without_card_crs_reads_in_its_utm_zone(scenes, tmp_path):
    _, half, _, _ = scenes
    geo = to_degrees(half, str(tmp_path / "geo.tif"))
    assert utm_zone(info(geo)).GetAuthorityCode(None) == "32633"
    plan = plan_grid(ModelCard.from_dict(card(1.0, None)), info(geo))
    assert plan.warp and "UTM zone EPSG:32633" in plan.message


@pytest.mark.parametrize("grid, size", [("input", 192), ("working", 96)])
def test_half_metre_raster_is_read_at_the_models_metre(scenes, tmp_path, grid, size):
    root, half, one, model = scenes
    out = str(tmp_path / "c.tif")
    r = segment(SegmentParams(half, model, out, probabilities_path=str(tmp_path / "p.tif"), output_grid=grid))
    ds = gdal.Open(out)
    assert (ds.RasterXSize, ds.RasterYSize) == (size, size)
    assert ds.GetGeoTransform()[1] == 96 / size
    assert r.tiles <= 25  # tiled at 1 m (96 px), not at 0.5 m (192 px: 49+ tiles)
    assert ds.GetRasterBand(1).GetColorTable().GetCount() >= 10 and category_names(out)[9] == "k9"
    classes = ds.ReadAsArray()
    hole = slice(int(size * 0.47), int(size * 0.53))
    assert (classes[hole, hole] == 255).all()  # input nodata → 255 through both warps
    direct = segment(SegmentParams(one, model, str(tmp_path / "d.tif")))
    ref = (
        gdal.Open(direct.output_path).ReadAsArray()
        if grid == "working"
        else warp_like(direct.output_path, out, str(tmp_path / "r.tif"))
    )
    keep = away_from_edges(ref)
    assert (classes[keep] == ref[keep]).mean() >= 0.99
    p = gdal.Open(str(tmp_path / "p.tif"))
    assert (p.RasterXSize, p.RasterCount) == (size, 3) and p.GetRasterBand(1).GetNoDataValue() == -1
    assert ds.GetRasterBand(1).GetOverviewCount() == 0 or ds.GetRasterBand(1).GetOverview(0) is not None
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no working-grid file left


def test_utm_model_on_a_degree_raster_agrees_with_the_utm_result(scenes, tmp_path):
    root, _, one, model = scenes
    geo = to_degrees(one, str(tmp_path / "geo.tif"))
    out = str(tmp_path / "geo_classes.tif")
    segment(SegmentParams(geo, model, out))
    g, o = gdal.Open(geo), gdal.Open(out)
    assert (o.RasterXSize, o.RasterYSize, o.GetGeoTransform()) == (g.RasterXSize, g.RasterYSize, g.GetGeoTransform())
    direct = segment(SegmentParams(one, model, str(tmp_path / "utm.tif")))
    ref = warp_like(direct.output_path, out, str(tmp_path / "back.tif"))
    keep = away_from_edges(ref)
    assert keep.sum() > 0.5 * ref.size
    assert (o.ReadAsArray()[keep] == ref[keep]).mean() >= 0.98


def test_raster_without_crs_and_a_card_crs_is_refused(scenes, tmp_path):
    _, half, _, model = scenes
    bare = str(tmp_path / "nocrs.tif")
    make_raster(bare, 192, 192, bands=3, dtype=gdal.GDT_Byte, pixel=0.5, epsg=None)
    with pytest.raises(GeoSegError, match="INPUT has no CRS, but the model was trained in EPSG:32633"):
        segment(SegmentParams(bare, model, str(tmp_path / "o.tif")))
    r = segment(SegmentParams(bare, model, str(tmp_path / "o.tif"), resolution="raster"))
    assert gdal.Open(r.output_path).RasterXSize == 192


def test_cancel_while_writing_back_leaves_nothing(scenes, tmp_path):
    """Cancel checked per strip of the final warp: no output, no working-grid file."""
    _, half, _, model = scenes
    seen: list[float] = []

    def cancelled() -> bool:
        return bool(seen) and seen[-1] >= 0.85  # the model has run; the warp back has begun

    with pytest.raises(Cancelled):
        segment(SegmentParams(half, model, str(tmp_path / "c.tif")), seen.append, cancelled)
    assert os.listdir(tmp_path) == []
