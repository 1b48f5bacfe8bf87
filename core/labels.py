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


def _open_layer(uri: str, what: str = "LABELS") -> tuple[ogr.DataSource, ogr.Layer]:
    path, layer_name = split_ogr_uri(uri)
    if not path:
        raise GeoSegError(f"{what}: no vector layer given.", param=what)
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise GeoSegError(f"{what}: file not found: {path}", param=what)
    try:
        ds = ogr.Open(path, 0)
    except RuntimeError as e:
        raise GeoSegError(f"{what}: OGR cannot open {path} as a vector layer ({e}).", param=what) from None
    if ds is None:
        raise GeoSegError(f"{what}: OGR cannot open {path} as a vector layer.", param=what)
    if ds.GetLayerCount() == 0:
        raise GeoSegError(f"{what}: {path} holds no vector layer.", param=what)
    layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    if layer is None:
        raise GeoSegError(f"{what}: {path} has no layer named '{layer_name}'.", param=what)
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
def load_labels(  # noqa: C901, PLR0912
    uri: str, info: RasterInfo, class_field: str | None = None, name_field: str | None = None, what: str = "LABELS"
) -> Labels:
    """Open, validate and reproject the label polygons to the raster's CRS (`what`: the parameter, LABELS
    or MASK, that messages name)."""
    ds, layer = _open_layer(uri, what)
    noun = "label layers" if what == "LABELS" else f"{what} layers"
    cls_idx = _check_field(layer, class_field, "CLASS_FIELD", INTEGER_TYPES) if class_field else -1
    name_idx = _check_field(layer, name_field, "NAME_FIELD", None) if name_field else -1

    layer_type = ogr.GT_Flatten(layer.GetGeomType())
    if layer_type not in POLYGON_TYPES and layer_type not in (ogr.wkbUnknown, ogr.wkbGeometryCollection):
        raise GeoSegError(
            f"{what}: the layer holds {_geometry_kind(layer_type)} geometries; {noun} must hold polygons.",
            param=what,
        )
    if layer.GetFeatureCount() == 0:
        raise GeoSegError(f"{what}: the layer has no features.", param=what)

    dst_srs = info.srs
    src_srs = _defined(layer.GetSpatialRef())
    transform = None
    if src_srs is not None and dst_srs is not None:
        src_srs = src_srs.Clone()
        src_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src_srs.IsSame(dst_srs):
            transform = osr.CoordinateTransformation(src_srs, dst_srs)
    elif (src_srs is None) != (dst_srs is None):
        which = f"{what} {'have' if what == 'LABELS' else 'has'}" if dst_srs is not None else "INPUT has"
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
                f"{what}: feature {feat.GetFID()} is a {_geometry_kind(gtype)}; {noun} must hold polygons only."
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
                    f"{what}: feature {feat.GetFID()} cannot be reprojected to the raster's CRS ({e}); "
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
        raise GeoSegError(f"{what}: no polygon with a class value{reason}.", param=what)
    rxmin, rymin, rxmax, rymax = info.extent
    if xmax <= rxmin or xmin >= rxmax or ymax <= rymin or ymin >= rymax:
        raise GeoSegError(
            f"{what} {'do' if what == 'LABELS' else 'does'} not overlap INPUT: {what.lower()} extent "
            f"({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g}) vs raster extent "
            f"({rxmin:.6g}, {rymin:.6g}, {rxmax:.6g}, {rymax:.6g}), in the raster's CRS."
        )
    return Labels(uri, sorted(values), names, skipped_null, mem_ds, mem_layer)


# ------------------------------------------------------------------ classified-raster labels (LABEL_RASTER)
INTEGER_GDAL_TYPES = {gdal.GDT_Byte, gdal.GDT_UInt16, gdal.GDT_Int16, gdal.GDT_UInt32, gdal.GDT_Int32}


@dataclass
class RasterLabels:
    """A classified raster seen through a GDAL warped VRT on the input's grid (nearest neighbour): each
    strip is warped when it is read, never the whole raster. The VRT's alpha band marks the pixels that
    have a label (not the raster's nodata, inside its extent)."""

    source: str
    class_names: dict[int, str]
    _src: gdal.Dataset = field(repr=False)
    _vrt: gdal.Dataset = field(repr=False)
    class_values: list[int] = field(default_factory=list)  # values are found while the strips are read
    skipped_null: int = 0

    def rasterize(self, info: RasterInfo, win: Window, background: int) -> np.ndarray:
        """Mask [h + pad_y, w + pad_x] uint8: the raster's class values, 255 at its nodata, outside it
        and in the padding. GeoSegError for a value outside 0-254, naming it and its pixel."""
        try:
            values = self._vrt.GetRasterBand(1).ReadAsArray(win.xoff, win.yoff, win.width, win.height)
            has = self._vrt.GetRasterBand(2).ReadAsArray(win.xoff, win.yoff, win.width, win.height) > 0
        except RuntimeError as e:
            raise GeoSegError(
                f"LABEL_RASTER: reading {self.source} failed near INPUT pixels {win.xoff}, {win.yoff} ({e}).",
                param="LABEL_RASTER",
            ) from None
        self._vrt.FlushCache()  # the warped blocks of a finished strip are not read again, nor are
        self._src.FlushCache()  # the label raster's blocks under it: the block cache stays at one strip
        bad = has & ((values < 0) | (values >= MASK_NODATA))
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise GeoSegError(
                f"LABEL_RASTER: value {values[row, col]} at INPUT pixel (column {win.xoff + col}, row "
                f"{win.yoff + row}), in the chip row starting at row {win.yoff}; class values must be 0-254 "
                "(255 marks ignored pixels). Reclassify the raster, or set that value as its nodata.",
                param="LABEL_RASTER",
            )
        mask = np.where(has, values, MASK_NODATA).astype(np.uint8)
        if win.pad_x or win.pad_y:
            mask = np.pad(mask, ((0, win.pad_y), (0, win.pad_x)), constant_values=MASK_NODATA)
        return mask


def raster_class_names(band: gdal.Band) -> dict[int, str]:
    """Class value → name from the band's category names, else from its attribute table (a name column,
    and a value column or the row number)."""
    names = {i: n for i, n in enumerate(band.GetCategoryNames() or []) if n and i < MASK_NODATA}
    if names:
        return names
    rat = band.GetDefaultRAT()
    if rat is None or rat.GetRowCount() == 0:
        return {}
    usages = [rat.GetUsageOfCol(c) for c in range(rat.GetColumnCount())]
    name_col = next((c for c, u in enumerate(usages) if u == gdal.GFU_Name), -1)
    if name_col < 0:
        name_col = next((c for c in range(rat.GetColumnCount()) if rat.GetTypeOfCol(c) == gdal.GFT_String), -1)
    if name_col < 0:
        return {}
    value_col = next((c for c, u in enumerate(usages) if u in (gdal.GFU_MinMax, gdal.GFU_Min)), -1)
    if value_col < 0:
        value_col = next((c for c in range(rat.GetColumnCount()) if rat.GetNameOfCol(c).lower() == "value"), -1)
    out = {}
    for r in range(rat.GetRowCount()):
        v = rat.GetValueAsInt(r, value_col) if value_col >= 0 else r
        name = rat.GetValueAsString(r, name_col)
        if name and 0 <= v < MASK_NODATA:
            out[v] = name
    return out


@with_gdal_exceptions
def load_label_raster(path: str, info: RasterInfo) -> RasterLabels:
    """Open and check a classified raster (one integer band, georeferenced like INPUT) and put a warped
    VRT of it on INPUT's grid."""
    from .raster import open_raster, pam_enabled  # one opener with the VRT-source check

    src = open_raster(path, "LABEL_RASTER")
    if src.RasterCount != 1:
        raise GeoSegError(
            f"LABEL_RASTER: {path} has {src.RasterCount} bands; a label raster has exactly one band of class "
            "values.",
            param="LABEL_RASTER",
        )
    band = src.GetRasterBand(1)
    if band.DataType not in INTEGER_GDAL_TYPES:
        raise GeoSegError(
            f"LABEL_RASTER: {path} is of type {gdal.GetDataTypeName(band.DataType)}; a label raster holds "
            "integer class values 0-254 (Byte or another integer type).",
            param="LABEL_RASTER",
        )
    if src.GetGeoTransform(can_return_null=True) is None:
        raise GeoSegError(f"LABEL_RASTER: {path} has no georeferencing (no geotransform).", param="LABEL_RASTER")
    src_wkt = src.GetProjection() or ""
    if bool(src_wkt) != bool(info.wkt):
        which = "LABEL_RASTER has" if info.wkt else "INPUT has"
        raise GeoSegError(
            f"{which} no coordinate reference system, so the labels cannot be placed on the raster. Assign one first.",
            param="LABEL_RASTER",
        )
    _check_overlap(src, info)
    xmin, ymin, xmax, ymax = info.extent
    opts = {
        "format": "VRT",
        "outputBounds": (xmin, ymin, xmax, ymax),
        "width": info.width,
        "height": info.height,
        "resampleAlg": "near",
        "dstAlpha": True,
        "errorThreshold": 0,  # exact transformation per pixel: a strip equals the same rows of a whole warp
        "multithread": False,
    }
    if info.wkt:
        opts.update(srcSRS=src_wkt, dstSRS=info.wkt)
    vrt = gdal.Warp("", src, options=gdal.WarpOptions(**opts))
    with pam_enabled():  # GeoTIFF keeps category names and attribute tables in its .aux.xml
        named = gdal.Open(path, gdal.GA_ReadOnly)
        named.GetGeoTransform()  # GDAL 3.6's GTiff reads the .aux.xml lazily
        names = raster_class_names(named.GetRasterBand(1))
        named = None
    return RasterLabels(path, names, src, vrt)


def _check_overlap(src: gdal.Dataset, info: RasterInfo) -> None:
    gt = src.GetGeoTransform()
    corners = [
        (gt[0] + c * gt[1] + r * gt[2], gt[3] + c * gt[4] + r * gt[5])
        for c in (0, src.RasterXSize)
        for r in (0, src.RasterYSize)
    ]
    wkt = src.GetProjection()
    if wkt and info.wkt:
        s = osr.SpatialReference()
        s.ImportFromWkt(wkt)
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not s.IsSame(info.srs):
            try:
                ct = osr.CoordinateTransformation(s, info.srs)
                x0, y0, x1, y1 = ct.TransformBounds(
                    min(x for x, _ in corners),
                    min(y for _, y in corners),
                    max(x for x, _ in corners),
                    max(y for _, y in corners),
                    21,
                )
            except (RuntimeError, AttributeError):
                return  # GDAL decides pixel by pixel then
            corners = [(x0, y0), (x1, y1)]
    xmin, xmax = min(x for x, _ in corners), max(x for x, _ in corners)
    ymin, ymax = min(y for _, y in corners), max(y for _, y in corners)
    rxmin, rymin, rxmax, rymax = info.extent
    if xmax <= rxmin or xmin >= rxmax or ymax <= rymin or ymin >= rymax:
        raise GeoSegError(
            f"LABEL_RASTER does not overlap INPUT: label raster extent ({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, "
            f"{ymax:.6g}) vs raster extent ({rxmin:.6g}, {rymin:.6g}, {rxmax:.6g}, {rymax:.6g}), in the raster's CRS.",
            param="LABEL_RASTER",
        )


class AreaOfInterest:
    """MASK polygons in the raster's CRS: which pixels of a window lie inside (pixel-centre rule)."""

    def __init__(self, uri: str, info: RasterInfo) -> None:
        self._polygons = load_labels(uri, info, what="MASK")

    def inside(self, info: RasterInfo, win: Window) -> np.ndarray:
        """bool [h + pad_y, w + pad_x]; the padding is outside."""
        return self._polygons.rasterize(info, win, 0) == 1
