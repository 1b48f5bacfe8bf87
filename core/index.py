"""The chip index: a GeoPackage of chip footprints the user can load to see the dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING

from osgeo import ogr

from .records import ChipRecord

if TYPE_CHECKING:
    from .raster import RasterInfo


def write_index(path: str, records: list[ChipRecord], values: list[int], info: RasterInfo, chip_size: int) -> None:
    """One polygon per chip with its files, split and per-class pixel counts."""
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = ds.CreateLayer("chips", info.srs, ogr.wkbPolygon)
    for name, ftype in (
        ("image", ogr.OFTString),
        ("mask", ogr.OFTString),
        ("split", ogr.OFTString),
        ("xoff", ogr.OFTInteger),
        ("yoff", ogr.OFTInteger),
        ("positive", ogr.OFTInteger),
        ("nodata_fraction", ogr.OFTReal),
        ("scene", ogr.OFTString),
    ):
        layer.CreateField(ogr.FieldDefn(name, ftype))
    for v in values:
        layer.CreateField(ogr.FieldDefn(f"class_{v}", ogr.OFTInteger64))
    gt = info.geotransform
    defn = layer.GetLayerDefn()
    layer.StartTransaction()
    for r in records:
        x0 = gt[0] + r.xoff * gt[1]
        y0 = gt[3] + r.yoff * gt[5]
        x1 = x0 + chip_size * gt[1]
        y1 = y0 + chip_size * gt[5]
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
            ring.AddPoint_2D(x, y)
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        f = ogr.Feature(defn)
        f.SetGeometry(poly)
        for k in ("image", "mask", "split", "xoff", "yoff"):
            f.SetField(k, getattr(r, k))
        f.SetField("positive", int(r.positive))
        f.SetField("nodata_fraction", r.nodata_fraction)
        f.SetField("scene", r.scene)
        for v in values:
            f.SetField(f"class_{v}", r.class_counts.get(v, 0))
        layer.CreateFeature(f)
    layer.CommitTransaction()
    ds = None
