"""QGIS layers → paths the GDAL/OGR engine can open: for Processing parameters (`raster_path`,
`vector_uri`) and for the dialogs' layer pickers (`raster_source`, `vector_source`)."""

from __future__ import annotations

import math
import os
import tempfile
import urllib.parse
from xml.sax.saxutils import escape as xml_escape

from qgis.core import (
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ..core.errors import GeoSegError

WEB_MERCATOR_HALF = 20037508.342789244  # metres from the centre to the edge of the XYZ tile pyramid


def is_xyz(layer: QgsRasterLayer) -> bool:
    """An XYZ tile layer (QGIS's wms provider with type=xyz)."""
    return layer.providerType() == "wms" and _uri(layer).get("type") == "xyz"


def is_web(layer: QgsRasterLayer) -> bool:
    """A layer served over the network (WMS/WMTS/XYZ/WCS...): its own extent is no sensible default area."""
    return layer.providerType() in ("wms", "wcs", "arcgismapserver")


def reads_directly(layer: QgsRasterLayer) -> bool:
    """GDAL opens the layer's source itself (a file, a VRT, or an XYZ layer as a GDAL WMS description)."""
    return layer.providerType() == "gdal" or is_xyz(layer)


def _uri(layer: QgsRasterLayer) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(layer.source(), keep_blank_values=True))


def xyz_wms_xml(layer: QgsRasterLayer, cache: str | None = None) -> str:
    """GDAL's WMS driver description (TMS service) of an XYZ layer, read at the layer's zmax level."""
    uri = _uri(layer)
    url = uri.get("url", "")
    for axis in ("x", "y", "z"):
        url = url.replace("{" + axis + "}", "${" + axis + "}")
    level = int(uri.get("zmax") or 18)
    h = WEB_MERCATOR_HALF
    return (
        "<GDAL_WMS>"
        f'<Service name="TMS"><ServerUrl>{xml_escape(url)}</ServerUrl></Service>'
        f"<DataWindow><UpperLeftX>{-h}</UpperLeftX><UpperLeftY>{h}</UpperLeftY>"
        f"<LowerRightX>{h}</LowerRightX><LowerRightY>{-h}</LowerRightY>"
        f"<TileLevel>{level}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
        "<YOrigin>top</YOrigin></DataWindow>"
        "<Projection>EPSG:3857</Projection><BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY>"
        "<BandsCount>3</BandsCount>"
        + (f"<Cache><Path>{xml_escape(cache)}</Path></Cache>" if cache else "")
        + "</GDAL_WMS>"
    )


def render_to_geotiff(layer: QgsRasterLayer, extent: QgsRectangle, path: str, feedback=None) -> str:
    """Read the layer's blocks through QGIS (its data provider, at the layer's resolution) into a tiled
    GeoTIFF over `extent` (layer CRS); `feedback` (QgsFeedback) gets the progress and may cancel."""
    provider = layer.dataProvider()
    area = extent.intersect(layer.extent()) if not layer.extent().isEmpty() else extent
    if area.isEmpty():
        raise GeoSegError("EXTENT: the area does not overlap the input layer.", param="EXTENT")
    xres = layer.rasterUnitsPerPixelX() or layer.extent().width() / max(1, layer.width())
    yres = layer.rasterUnitsPerPixelY() or layer.extent().height() / max(1, layer.height())
    cols, rows = max(1, math.ceil(area.width() / xres - 1e-6)), max(1, math.ceil(area.height() / yres - 1e-6))
    area = QgsRectangle(area.xMinimum(), area.yMaximum() - rows * yres, area.xMinimum() + cols * xres, area.yMaximum())
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise GeoSegError(f"INPUT: QGIS cannot read the blocks of '{layer.name()}'.", param="INPUT")
    writer = QgsRasterFileWriter(path)
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
    block_feedback = QgsRasterBlockFeedback()
    if feedback is not None:
        block_feedback.progressChanged.connect(feedback.setProgress)
        feedback.canceled.connect(block_feedback.cancel)
    error = writer.writeRaster(
        pipe, cols, rows, area, layer.crs(), QgsProject.instance().transformContext(), block_feedback
    )
    if block_feedback.isCanceled() or (feedback is not None and feedback.isCanceled()):
        raise GeoSegError("INPUT: cancelled while reading the layer.", param="INPUT")
    if error != QgsRasterFileWriter.NoError:
        raise GeoSegError(f"INPUT: could not copy '{layer.name()}' to a temporary GeoTIFF (error {error}).")
    return path


def gdal_raster_source(
    layer: QgsRasterLayer | None,
    what: str,
    extent: QgsRectangle | None = None,
    feedback=None,
    folder: str | None = None,
) -> str:
    """A GDAL source for any raster layer (the engine reads rasters with GDAL only): a GDAL layer's own
    source; an XYZ layer's GDAL WMS description (an .xml file in `folder`); any other layer read block by
    block by QGIS into a temporary GeoTIFF over `extent` (layer CRS; default its extent) in `folder`.

    Shared by the algorithms and the dialogs; `what` names the parameter or widget.
    """
    if layer is None:
        raise GeoSegError(f"{what}: choose a raster layer (none given, or it could not be opened).")
    if layer.providerType() == "gdal":
        return layer.source()
    folder = folder or tempfile.mkdtemp(prefix="geoseg-layer-")
    if is_xyz(layer):
        path = os.path.join(folder, "xyz.xml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(xyz_wms_xml(layer, os.path.join(folder, "tiles")))
        return path
    return render_to_geotiff(layer, extent or layer.extent(), os.path.join(folder, "layer.tif"), feedback)


# ---------------------------------------------------------------- Processing parameters
def raster_path(alg, parameters, name: str, context, feedback=None) -> str:
    """A GDAL source of a raster layer parameter (see `gdal_raster_source`); a layer QGIS must read
    itself is copied over the algorithm's EXTENT (when it has one) into Processing's temporary folder."""
    try:
        layer = alg.parameterAsRasterLayer(parameters, name, context)
        if alg.parameterDefinition("EXTENT") is None:  # only segment reads a window of any layer
            return raster_source(layer, name)
        given = parameters.get("EXTENT") not in (None, "")
        if layer is not None and is_web(layer) and not given:
            raise GeoSegError(f"EXTENT: give the area to segment of the web layer '{layer.name()}'.", param="EXTENT")
        extent = None
        if layer is not None and not reads_directly(layer) and given:
            extent = alg.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
        folder = tempfile.mkdtemp(prefix="geoseg-layer-", dir=QgsProcessingUtils.tempFolder())
        return gdal_raster_source(layer, name, extent, feedback, folder)
    except GeoSegError as e:
        raise QgsProcessingException(str(e)) from None


def vector_uri(alg, parameters, name: str, context, feedback) -> str:
    """An OGR-openable 'path|layername=x' for a feature source parameter.

    File layers are read in place; memory and database layers (and selections) are
    exported by Processing to a temporary GeoPackage first, and so is a "selected features
    only" source.
    """
    path, layer_name = alg.parameterAsCompatibleSourceLayerPathAndLayerName(
        parameters, name, context, ["gpkg", "shp", "geojson", "fgb"], "gpkg", feedback
    )
    if not path:
        raise QgsProcessingException(f"{name}: no vector layer given, or it could not be opened.")
    return f"{path}|layername={layer_name}" if layer_name else path


# ---------------------------------------------------------------- dialog layer pickers
def raster_source(layer: QgsRasterLayer | None, what: str = "Input raster") -> str:
    """Path of a GDAL raster layer (steps that read a whole layer; segment takes any layer through
    `gdal_raster_source` and its EXTENT)."""
    if layer is not None and layer.providerType() != "gdal":
        raise GeoSegError(
            f"{what}: '{layer.name()}' is served by the {layer.providerType()} provider; this step reads "
            "rasters through GDAL, so save it as a GeoTIFF first (Segment reads any layer)."
        )
    return gdal_raster_source(layer, what)


def vector_source(layer: QgsVectorLayer | None, temp_dirs: list[str]) -> str:
    """An OGR-openable 'path|layername=x' for `layer`.

    File layers are read in place. Anything core could not open the same way QGIS shows it
    (memory/database layers, filtered layers, layers addressed by layer id) is first written
    to a temporary GeoPackage; its folder is appended to `temp_dirs` for the caller to remove.
    """
    if layer is None:
        raise GeoSegError("Label polygons: choose a polygon layer.")
    if layer.providerType() == "ogr":
        parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
        path = parts.get("path") or ""
        layer_name = parts.get("layerName")
        layer_id = parts.get("layerId")
        if os.path.exists(path) and not parts.get("subset") and (layer_name or not layer_id):
            return f"{path}|layername={layer_name}" if layer_name else path
    return _write_temp_geopackage(layer, temp_dirs)


def _write_temp_geopackage(layer: QgsVectorLayer, temp_dirs: list[str]) -> str:
    folder = tempfile.mkdtemp(prefix="geoseg-labels-")
    temp_dirs.append(folder)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "labels"
    options.fileEncoding = "UTF-8"
    error, message, new_file, new_layer = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, os.path.join(folder, "labels.gpkg"), QgsProject.instance().transformContext(), options
    )
    if error != QgsVectorFileWriter.NoError:
        raise GeoSegError(
            f"Label polygons: could not copy '{layer.name()}' to a temporary GeoPackage " f"({message or error})."
        )
    return f"{new_file}|layername={new_layer}" if new_layer else new_file
