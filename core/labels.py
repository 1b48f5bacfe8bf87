"""Label polygons → mask windows on the raster's grid.

The labels are read once, validated, reprojected to the raster CRS and kept in an OGR
memory layer; each chip then rasterizes only the polygons its window touches, with GDAL's
pixel-centre rule, so a mask chip equals the same window of a whole-raster rasterization.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, ogr, osr

from .errors import GeoSegError
from .gdalx import with_gdal_exceptions
from .grid import Window
from .raster import MASK_NODATA, RasterInfo, window_geotransform

POLYGON_TYPES = {ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface}
INTEGER_TYPES = {ogr.OFTInteger, ogr.OFTInteger64}
BURN_FIELD = "geoseg_class"


def split_ogr_uri(uri: str) -> tuple[str, str | None]:
    """'file.gpkg|layername=x' (QGIS style) → ('file.gpkg', 'x')."""
    path, _, rest = uri.partition("|")
    layer = None
    for part in rest.split("|"):
        if part.startswith("layername="):
            layer = part[len("layername=") :]
    return path, layer


@dataclass
class Labels:
    """Validated polygons in the raster CRS, ready to burn into mask windows."""

    source: str
    class_values: list[int]
    class_names: dict[int, str]
    skipped_null: int
    _ds: ogr.DataSource = field(repr=False)
    _layer: ogr.Layer = field(repr=False)

    def rasterize(self, info: RasterInfo, win: Window, background: int) -> np.ndarray:
        """Mask [h + pad_y, w + pad_x] uint8: class inside polygons, background elsewhere,
        255 in the padding."""
        gt = window_geotransform(info.geotransform, win)
        mem = gdal.GetDriverByName("MEM").Create("", win.width, win.height, 1, gdal.GDT_Byte)
        mem.SetGeoTransform(gt)
        band = mem.GetRasterBand(1)
        band.Fill(background)
        x0, y1 = gt[0], gt[3]
        x1, y0 = x0 + gt[1] * win.width, y1 + gt[5] * win.height
        self._layer.SetSpatialFilterRect(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        gdal.RasterizeLayer(mem, [1], self._layer, options=[f"ATTRIBUTE={BURN_FIELD}"])
        self._layer.SetSpatialFilter(None)
        mask = band.ReadAsArray()
        if win.pad_x or win.pad_y:
            mask = np.pad(mask, ((0, win.pad_y), (0, win.pad_x)), constant_values=MASK_NODATA)
        return mask


def _open_layer(uri: str) -> tuple[ogr.DataSource, ogr.Layer]:
    path, layer_name = split_ogr_uri(uri)
    if not path:
        raise GeoSegError("LABELS: no vector layer given.")
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise GeoSegError(f"LABELS: file not found: {path}")
    try:
        ds = ogr.Open(path, 0)
    except RuntimeError as e:
        raise GeoSegError(f"LABELS: OGR cannot open {path} as a vector layer ({e}).") from None
    if ds is None:
        raise GeoSegError(f"LABELS: OGR cannot open {path} as a vector layer.")
    if ds.GetLayerCount() == 0:
        raise GeoSegError(f"LABELS: {path} holds no vector layer.")
    layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    if layer is None:
        raise GeoSegError(f"LABELS: {path} has no layer named '{layer_name}'.")
    return ds, layer


def _check_field(layer: ogr.Layer, name: str, what: str, types: set[int] | None) -> int:
    defn = layer.GetLayerDefn()
    idx = defn.GetFieldIndex(name)
    if idx < 0:
        names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        raise GeoSegError(f"{what}: the labels have no field '{name}' (fields: {', '.join(names) or 'none'}).")
    fdef = defn.GetFieldDefn(idx)
    if types is not None and fdef.GetType() not in types:
        raise GeoSegError(
            f"{what}: field '{name}' is of type {fdef.GetTypeName()}; it must be an integer "
            "field holding class values 0-254."
        )
    return idx


def _geometry_kind(geom_type: int) -> str:
    return ogr.GeometryTypeToName(geom_type)


def _defined(srs: osr.SpatialReference | None) -> osr.SpatialReference | None:
    """None for a missing CRS, including GeoPackage's 'Undefined geographic/Cartesian SRS'."""
    if srs is None or (srs.GetName() or "").startswith("Undefined "):
        return None
    return srs


# Complexity kept: one check per way a label layer can be wrong (geometry type, CRS, field type, empty,
# invalid values), each with its own message, in the order a user meets them.
@with_gdal_exceptions
def load_labels(uri: str, info: RasterInfo, class_field: str | None = None, name_field: str | None = None) -> Labels:  # noqa: C901, PLR0912
    """Open, validate and reproject the label polygons to the raster's CRS."""
    ds, layer = _open_layer(uri)
    cls_idx = _check_field(layer, class_field, "CLASS_FIELD", INTEGER_TYPES) if class_field else -1
    name_idx = _check_field(layer, name_field, "NAME_FIELD", None) if name_field else -1

    layer_type = ogr.GT_Flatten(layer.GetGeomType())
    if layer_type not in POLYGON_TYPES and layer_type not in (ogr.wkbUnknown, ogr.wkbGeometryCollection):
        raise GeoSegError(
            f"LABELS: the layer holds {_geometry_kind(layer_type)} geometries; label layers must " "hold polygons."
        )
    if layer.GetFeatureCount() == 0:
        raise GeoSegError("LABELS: the layer has no features.")

    dst_srs = info.srs
    src_srs = _defined(layer.GetSpatialRef())
    transform = None
    if src_srs is not None and dst_srs is not None:
        src_srs = src_srs.Clone()
        src_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src_srs.IsSame(dst_srs):
            transform = osr.CoordinateTransformation(src_srs, dst_srs)
    elif (src_srs is None) != (dst_srs is None):
        which = "LABELS have" if dst_srs is not None else "INPUT has"
        raise GeoSegError(
            f"{which} no coordinate reference system, so the labels cannot be "
            "placed on the raster. Assign one first."
        )

    mem_ds = ogr.GetDriverByName("Memory").CreateDataSource("labels")
    mem_layer = mem_ds.CreateLayer("labels", dst_srs, ogr.wkbMultiPolygon)
    mem_layer.CreateField(ogr.FieldDefn(BURN_FIELD, ogr.OFTInteger))
    out_defn = mem_layer.GetLayerDefn()

    values: set[int] = set()
    names: dict[int, str] = {}
    bad_values: set[int] = set()
    skipped_null = 0
    xmin = ymin = float("inf")
    xmax = ymax = float("-inf")
    layer.ResetReading()
    for feat in layer:
        geom = feat.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            continue
        gtype = ogr.GT_Flatten(geom.GetGeometryType())
        if gtype not in POLYGON_TYPES:
            raise GeoSegError(
                f"LABELS: feature {feat.GetFID()} is a {_geometry_kind(gtype)}; "
                "label layers must hold polygons only."
            )
        if cls_idx >= 0:
            if not feat.IsFieldSetAndNotNull(cls_idx):
                skipped_null += 1
                continue
            value = feat.GetFieldAsInteger64(cls_idx)
        else:
            value = 1
        if not 0 <= value < MASK_NODATA:
            bad_values.add(value)
            continue
        values.add(value)
        if name_idx >= 0 and value not in names and feat.IsFieldSetAndNotNull(name_idx):
            names[value] = feat.GetFieldAsString(name_idx)
        geom = geom.GetLinearGeometry() if gtype in (ogr.wkbCurvePolygon, ogr.wkbMultiSurface) else geom.Clone()
        if transform is not None:
            try:
                geom.Transform(transform)
            except RuntimeError as e:
                raise GeoSegError(
                    f"LABELS: feature {feat.GetFID()} cannot be reprojected to the raster's CRS ({e}); "
                    "check that the labels' CRS is right."
                ) from None
        ex = geom.GetEnvelope()
        xmin, xmax = min(xmin, ex[0]), max(xmax, ex[1])
        ymin, ymax = min(ymin, ex[2]), max(ymax, ex[3])
        out = ogr.Feature(out_defn)
        out.SetField(0, int(value))
        out.SetGeometryDirectly(geom)
        mem_layer.CreateFeature(out)

    if bad_values:
        shown = ", ".join(str(v) for v in sorted(bad_values)[:5])
        raise GeoSegError(f"CLASS_FIELD: class values must be 0-254 (255 marks ignored pixels); " f"found {shown}.")
    if not values:
        reason = f" ({skipped_null} had no class value)" if skipped_null else ""
        raise GeoSegError(f"LABELS: no polygon with a class value{reason}.")
    rxmin, rymin, rxmax, rymax = info.extent
    if xmax <= rxmin or xmin >= rxmax or ymax <= rymin or ymin >= rymax:
        raise GeoSegError(
            "LABELS do not overlap INPUT: labels extent "
            f"({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g}) vs raster extent "
            f"({rxmin:.6g}, {rymin:.6g}, {rxmax:.6g}, {rymax:.6g}), in the raster's CRS."
        )
    return Labels(uri, sorted(values), names, skipped_null, mem_ds, mem_layer)
