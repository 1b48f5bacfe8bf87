"""Label validation: each bad input gets its own message and leaves no output."""

from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import gdal, ogr

from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import GeoSegError
from geoseg.core.labels import split_ogr_uri
from tests.support.helpers import make_raster, make_vector, rasterize_whole, standard_labels, utm_box


@pytest.fixture
def raster(tmp_path):
    path = str(tmp_path / "r.tif")
    make_raster(path, 120, 90, bands=3)
    return path


def export(raster, labels, tmp_path, **kw):
    kw.setdefault("class_field", "cls")
    return export_chips(ExportParams(raster, labels, str(tmp_path / "out"), chip_size=32, **kw))


def fails(raster, labels, tmp_path, message, **kw):
    with pytest.raises(GeoSegError, match=message):
        export(raster, labels, tmp_path, **kw)
    assert not (tmp_path / "out").exists()


def test_missing_field(raster, tmp_path):
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 50, 50), 1)])
    fails(raster, labels, tmp_path, r"no field 'klass' \(fields: cls\)", class_field="klass")


def test_non_integer_field(raster, tmp_path):
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 50, 50), 1.0)], field_type=ogr.OFTReal)
    fails(raster, labels, tmp_path, "is of type Real; it must be an integer")
    text = make_vector(str(tmp_path / "t.gpkg"), [(utm_box(0, 0, 50, 50), "forest")], field_type=ogr.OFTString)
    fails(raster, text, tmp_path, "is of type String")


def test_point_layer(raster, tmp_path):
    labels = make_vector(str(tmp_path / "p.gpkg"), [("POINT(500010 5299990)", 1)], geom_type=ogr.wkbPoint)
    fails(raster, labels, tmp_path, "holds Point geometries; label layers must hold polygons")


def test_mixed_geometry_layer(raster, tmp_path):
    line = "LINESTRING(500010 5299990, 500100 5299900)"
    labels = make_vector(str(tmp_path / "m.gpkg"), [(utm_box(0, 0, 50, 50), 1), (line, 2)], geom_type=ogr.wkbUnknown)
    fails(raster, labels, tmp_path, "is a Line String; label layers must hold polygons only")


def test_labels_outside_raster(raster, tmp_path):
    labels = make_vector(str(tmp_path / "far.gpkg"), [(utm_box(1000, 1000, 1100, 1100), 1)])
    fails(raster, labels, tmp_path, "LABELS do not overlap INPUT")


def test_empty_layer(raster, tmp_path):
    labels = make_vector(str(tmp_path / "e.gpkg"), [])
    fails(raster, labels, tmp_path, "the layer has no features")


def test_class_values_out_of_range(raster, tmp_path):
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 50, 50), 300), (utm_box(50, 0, 90, 50), -1)])
    fails(raster, labels, tmp_path, "class values must be 0-254.*found -1, 300")


def test_null_classes_are_skipped(raster, tmp_path):
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 50, 50), 2), (utm_box(60, 0, 90, 50), None)])
    res = export(raster, labels, tmp_path)
    assert res.dataset["class_pixel_counts"]["2"] == 50 * 50
    only_null = make_vector(str(tmp_path / "n.gpkg"), [(utm_box(0, 0, 50, 50), None)])
    with pytest.raises(GeoSegError, match=r"no polygon with a class value \(1 had no class value\)"):
        export(raster, only_null, tmp_path / "x")


def test_no_class_field_burns_one(raster, tmp_path):
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(10, 10, 40, 40), 7)])
    res = export(raster, labels, tmp_path, class_field=None)
    assert [c["value"] for c in res.dataset["classes"]] == [0, 1]
    assert res.dataset["class_pixel_counts"]["1"] == 900


def test_labels_without_crs_on_georeferenced_raster(raster, tmp_path):
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 50, 50), 1)], dst_epsg=None)
    fails(raster, labels, tmp_path, "LABELS have no coordinate reference system")


def test_missing_and_garbled_files(raster, tmp_path):
    fails(raster, str(tmp_path / "nothere.gpkg"), tmp_path, "LABELS: file not found")
    (tmp_path / "junk.gpkg").write_bytes(b"not a geopackage")
    fails(raster, str(tmp_path / "junk.gpkg"), tmp_path, "LABELS: OGR cannot open")
    labels = make_vector(str(tmp_path / "l.gpkg"), [(utm_box(0, 0, 50, 50), 1)])
    fails(str(tmp_path / "none.tif"), labels, tmp_path, "INPUT: raster file not found")


def test_layer_name_in_uri(raster, tmp_path):
    path = make_vector(str(tmp_path / "multi.gpkg"), [(utm_box(0, 0, 20, 20), 1)], layer="a", dst_epsg=32633)
    ds = ogr.Open(path, 1)
    lyr = ds.CreateLayer("b", ds.GetLayer(0).GetSpatialRef(), ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetField("cls", 5)
    f.SetGeometry(ogr.CreateGeometryFromWkt(utm_box(30, 30, 60, 60)))
    lyr.CreateFeature(f)
    ds = None
    assert split_ogr_uri(f"{path}|layername=b") == (path, "b")
    res = export(raster, f"{path}|layername=b", tmp_path)
    assert [c["value"] for c in res.dataset["classes"]] == [0, 5]
    fails(raster, f"{path}|layername=zzz", tmp_path / "z", "has no layer named 'zzz'")


def test_same_crs_labels_match_whole_rasterization(tmp_path):
    raster = str(tmp_path / "r.tif")
    make_raster(raster, 150, 130, bands=1, nodata=None)
    labels = standard_labels(str(tmp_path / "l.gpkg"), dst_epsg=32633)
    res = export(raster, labels, tmp_path, validation_fraction=0)
    ref = rasterize_whole(raster, labels)
    got = np.zeros_like(ref)
    for f in os.listdir(tmp_path / "out" / "masks"):
        ds = gdal.Open(str(tmp_path / "out" / "masks" / f))
        gt = ds.GetGeoTransform()
        x, y = round((gt[0] - 500000) / 2), round((5300000 - gt[3]) / 2)
        got[y : y + 32, x : x + 32] = ds.ReadAsArray()
    np.testing.assert_array_equal(got, ref)
    assert res.n_validation == 0
