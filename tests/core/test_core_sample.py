"""The synthetic sample scene: deterministic, well-formed, labels consistent, and not trivially separable."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from geoseg.core.sample import make_sample_scene

gdal.UseExceptions()
ogr.UseExceptions()
pytestmark = pytest.mark.core  # pure engine: part of the QGIS-free run

W, H = 200, 150


def read(path: str) -> np.ndarray:
    return gdal.Open(path).ReadAsArray()


def truth_of(scene) -> np.ndarray:
    return read(scene.truth)


def label_classes(path: str) -> list[int]:
    ds = ogr.Open(path)  # keep the dataset referenced while its layer is used
    return [f.GetField("class") for f in ds.GetLayer(0)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_sample_scene(str(tmp_path_factory.mktemp("scene")), seed=3, width=W, height=H)


def test_deterministic(tmp_path):
    a = make_sample_scene(str(tmp_path / "a"), seed=7, width=W, height=H)
    b = make_sample_scene(str(tmp_path / "b"), seed=7, width=W, height=H)
    c = make_sample_scene(str(tmp_path / "c"), seed=8, width=W, height=H)
    assert np.array_equal(read(a.raster), read(b.raster))
    assert np.array_equal(truth_of(a), truth_of(b))
    assert label_classes(a.labels) == label_classes(b.labels)
    assert not np.array_equal(read(a.raster), read(c.raster))


def test_raster_format(scene):
    ds = gdal.Open(scene.raster)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (W, H, 4)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    assert srs.GetAuthorityCode(None) == "32633"
    gt = ds.GetGeoTransform()
    assert gt[1] == 2.0 and gt[5] == -2.0 and gt[2] == gt[4] == 0
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    for i in range(1, 5):
        band = ds.GetRasterBand(i)
        assert band.DataType == gdal.GDT_UInt16
        assert band.GetNoDataValue() == 0
        assert band.GetBlockSize()[1] > 1  # tiled, not strips
    a = ds.ReadAsArray()
    hole = (a == 0).all(axis=0)
    assert 0.005 < hole.mean() < 0.1
    assert np.array_equal(hole, (a == 0).any(axis=0))  # nodata is all bands or none
    valid = a[:, ~hole]
    assert 100 < np.median(valid) and valid.max() < 10000
    assert np.array_equal(truth_of(scene) == 255, hole)


def test_options(tmp_path):
    s = make_sample_scene(
        str(tmp_path / "x"),
        seed=1,
        width=120,
        height=90,
        bands=6,
        pixel_size=10.0,
        epsg=32632,
        labels_epsg=32632,
        nodata_hole=False,
    )
    ds = gdal.Open(s.raster)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (120, 90, 6)
    assert ds.GetGeoTransform()[1] == 10.0
    assert (ds.ReadAsArray() == 0).sum() == 0
    vec = ogr.Open(s.labels)
    assert vec.GetLayer(0).GetSpatialRef().GetAuthorityCode(None) == "32632"
    with pytest.raises(FileExistsError):
        make_sample_scene(str(tmp_path / "x"), seed=1, width=120, height=90)


def test_labels_layer(scene):
    vec = ogr.Open(scene.labels)
    layer = vec.GetLayer(0)
    assert ogr.GT_Flatten(layer.GetGeomType()) == ogr.wkbPolygon
    defn = layer.GetLayerDefn()
    assert defn.GetFieldDefn(defn.GetFieldIndex(scene.class_field)).GetType() == ogr.OFTInteger
    assert defn.GetFieldIndex(scene.name_field) >= 0
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    minx, maxx, miny, maxy = layer.GetExtent()
    assert 14 < minx < maxx < 16 and 47 < miny < maxy < 49  # lon/lat order, near UTM 33N origin
    classes = set(label_classes(scene.labels))
    assert len(classes) >= 3 and classes <= set(scene.classes)
    for f in layer:
        assert f.GetField(scene.name_field) == scene.classes[f.GetField(scene.class_field)]


def test_labels_rasterize_to_truth(scene):
    src = gdal.Open(scene.raster)
    mem = gdal.GetDriverByName("MEM").Create("", W, H, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(src.GetGeoTransform())
    mem.SetProjection(src.GetProjection())
    vec = ogr.Open(scene.labels)
    gdal.RasterizeLayer(mem, [1], vec.GetLayer(0), options=[f"ATTRIBUTE={scene.class_field}"])
    burnt = mem.ReadAsArray()
    truth = truth_of(scene)
    labelled = (truth > 0) & (truth != 255)
    assert (burnt[labelled] == truth[labelled]).mean() >= 0.99
    assert (burnt[truth == 0] == 0).mean() >= 0.95


@pytest.mark.parametrize("seed", [0, 5])
def test_not_trivially_separable(tmp_path, seed):
    s = make_sample_scene(str(tmp_path), seed=seed, width=W, height=H)
    x = read(s.raster).reshape(4, -1).T.astype(float)
    y = truth_of(s).ravel()
    keep = (y > 0) & (y != 255)
    x, y = x[keep], y[keep]
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    pred = classes[np.argmin(((x[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)]
    accuracy = (pred == y).mean()
    majority = max((y == c).mean() for c in classes)
    assert majority + 0.1 < accuracy < 0.95


def test_label_fraction(tmp_path):
    full = label_classes(make_sample_scene(str(tmp_path / "f"), seed=2, width=W, height=H).labels)
    part_scene = make_sample_scene(str(tmp_path / "p"), seed=2, width=W, height=H, label_fraction=0.5)
    part = label_classes(part_scene.labels)
    assert len(part) < 0.8 * len(full)
    assert set(part) == set(full)
    assert np.array_equal(read(part_scene.raster), read(str(tmp_path / "f" / "sample_scene.tif")))
