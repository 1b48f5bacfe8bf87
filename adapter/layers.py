"""QGIS layers → paths the GDAL/OGR engine can open: for Processing parameters (`raster_path`,
`vector_uri`) and for the dialogs' layer pickers (`raster_source`, `vector_source`)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ..core.errors import Cancelled, GeoSegError
from ..core.gdalx import with_gdal_exceptions

COPY_PREFIX = "geoseg-layer-"  # temporary folders of layer copies
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


Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]


@dataclass
class LayerCopy:
    """A layer's pixels to be copied into a tiled GeoTIFF at `path`: everything QGIS needs, taken from
    the layer on the main thread (`prepare_copy`), so that `write` may run on a task's worker thread
    (it touches only the cloned provider, as QGIS's own map renderers do)."""

    pipe: QgsRasterPipe
    cols: int
    rows: int
    area: QgsRectangle
    crs: QgsCoordinateReferenceSystem
    context: QgsCoordinateTransformContext
    name: str
    path: str
    image: bool  # a rendered image (WMS...): QGIS writes RGBA; the engine gets RGB with alpha as mask

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    def write(self, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False) -> str:
        """Copy the blocks (progress 0..1; `cancelled` is polled between blocks); returns the GDAL
        source: the GeoTIFF, or for an image its RGB bands with the alpha band as mask (a VRT beside
        it). On cancel or error the partial files are removed and GeoSegError (Cancelled) raised."""
        if cancelled():
            raise Cancelled()
        block_feedback = QgsRasterBlockFeedback()

        def on_progress(percent: float) -> None:  # same thread as the writer: a direct call
            progress(min(1.0, percent / 100.0))
            if cancelled():
                block_feedback.cancel()

        block_feedback.progressChanged.connect(on_progress)
        writer = QgsRasterFileWriter(self.path)
        writer.setOutputFormat("GTiff")
        writer.setCreateOptions(["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
        try:
            error = writer.writeRaster(
                self.pipe, self.cols, self.rows, self.area, self.crs, self.context, block_feedback
            )
            if block_feedback.isCanceled() or cancelled():
                raise Cancelled()
            if error != QgsRasterFileWriter.NoError:
                raise GeoSegError(f"INPUT: could not copy '{self.name}' to a temporary GeoTIFF (error {error}).")
            source = self._rgb_with_mask() if self.image else self.path
        except BaseException:
            for leftover in (self.path, self.path + ".vrt"):
                if os.path.exists(leftover):
                    os.remove(leftover)
            raise
        progress(1.0)
        return source

    @with_gdal_exceptions
    def _rgb_with_mask(self) -> str:
        """QGIS writes a rendered image as RGBA; models read RGB, and transparency is 'no data'."""
        vrt = self.path + ".vrt"
        gdal.Translate(vrt, self.path, format="VRT", bandList=[1, 2, 3], maskBand=4)
        with open(vrt, encoding="utf-8") as f:  # absolute: core's EXTENT clip makes a VRT of this VRT elsewhere
            text = f.read()
        relative = f'relativeToVRT="1">{xml_escape(os.path.basename(self.path))}<'
        with open(vrt, "w", encoding="utf-8") as f:
            f.write(text.replace(relative, f'relativeToVRT="0">{xml_escape(os.path.abspath(self.path))}<'))
        return vrt


def prepare_copy(
    layer: QgsRasterLayer, extent: QgsRectangle, path: str, pixel: tuple[float, float] | None = None
) -> LayerCopy:
    """A `LayerCopy` of `layer` over `extent` (layer CRS; clipped to the layer's extent) at the layer's
    own pixel size, or at `pixel` (layer units) for a layer that has none (a WMS is drawn at any scale).
    Main thread only."""
    provider = layer.dataProvider()
    area = extent.intersect(layer.extent()) if not layer.extent().isEmpty() else extent
    if area.isEmpty():
        raise GeoSegError("EXTENT: the area does not overlap the input layer.", param="EXTENT")
    if has_pixel_size(layer):
        xres, yres = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    elif pixel is not None:
        xres, yres = pixel
    else:
        raise GeoSegError(
            f"PIXEL_SIZE: '{layer.name()}' has no pixel size of its own and the model card gives none; set "
            "RESOLUTION to a given pixel size and PIXEL_SIZE.",
            param="PIXEL_SIZE",
        )
    cols, rows = max(1, math.ceil(area.width() / xres - 1e-6)), max(1, math.ceil(area.height() / yres - 1e-6))
    area = QgsRectangle(area.xMinimum(), area.yMaximum() - rows * yres, area.xMinimum() + cols * xres, area.yMaximum())
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise GeoSegError(f"INPUT: QGIS cannot read the blocks of '{layer.name()}'.", param="INPUT")
    image = provider.dataType(1) in (Qgis.ARGB32, Qgis.ARGB32_Premultiplied)
    context = QgsProject.instance().transformContext()
    return LayerCopy(pipe, cols, rows, area, layer.crs(), context, layer.name(), path, image)


def has_pixel_size(layer: QgsRasterLayer) -> bool:
    """Whether the layer has pixels of its own (a file, a virtual raster), unlike a WMS drawn at any scale."""
    return bool(layer.dataProvider().capabilities() & QgsRasterDataProvider.Size)


def pixel_in_layer_units(
    layer: QgsRasterLayer, area: QgsRectangle, size: float, crs: QgsCoordinateReferenceSystem | None
) -> tuple[float, float]:
    """A square pixel of `size` units of `crs` (None: the layer's) at the centre of `area`, as (x, y)
    sizes in the layer's units: the pixel size to read a layer without one at."""
    if crs is None or not crs.isValid() or crs == layer.crs():
        return size, size
    to_crs = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance())
    c = to_crs.transform(area.center())
    box = to_crs.transformBoundingBox(
        QgsRectangle(c.x(), c.y(), c.x() + size, c.y() + size), Qgis.TransformDirection.Reverse
    )
    return box.width(), box.height()


def working_pixel(
    layer: QgsRasterLayer, area: QgsRectangle, resolution: str, pixel_size: float | None, card: Any
) -> tuple[float, float] | None:
    """The pixel size (layer units) to copy a layer without one at: PIXEL_SIZE when RESOLUTION says so,
    else the model card's (both in the card's CRS when it has one); None when neither is known."""
    crs = None
    if card is not None and card.crs is not None and (card.crs.wkt or card.crs.authid):
        crs = QgsCoordinateReferenceSystem(card.crs.wkt or card.crs.authid)
    if resolution == "size" and pixel_size:
        return pixel_in_layer_units(layer, area, pixel_size, crs)
    if card is not None and card.pixel_size:
        return pixel_in_layer_units(layer, area, float(card.pixel_size[0]), crs)
    return None


def render_to_geotiff(
    layer: QgsRasterLayer, extent: QgsRectangle, path: str, feedback=None, pixel: tuple[float, float] | None = None
) -> str:
    """Read the layer's blocks through QGIS into a tiled GeoTIFF over `extent` (layer CRS) in this thread
    (`prepare_copy` + `LayerCopy.write`); `feedback` (QgsFeedback) gets the progress and may cancel."""
    copy = prepare_copy(layer, extent, path, pixel)
    if feedback is None:
        return copy.write()
    return copy.write(lambda f: feedback.setProgress(100.0 * f), feedback.isCanceled)


def copied_then(copy: LayerCopy, func: Callable[..., Any], share: float = 0.25) -> Callable[..., Any]:
    """`func(p, progress, cancelled)` (a core entry point taking SegmentParams-like `p`) run on the
    layer's copy: the returned callable writes the copy (the first `share` of the progress), then runs
    `func` with `input_path` replaced by it (its own preflight checks the copy), and always removes the
    copy's folder. For a QgsTask: the copy is read on the worker thread, with progress and cancel."""

    def run(p: Any, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False) -> Any:
        try:
            source = copy.write(lambda f: progress(share * f), cancelled)
            rest = dataclasses.replace(p, input_path=source)
            return func(rest, progress=lambda f: progress(share + (1.0 - share) * f), cancelled=cancelled)
        finally:
            shutil.rmtree(copy.folder, ignore_errors=True)

    return run


def gdal_raster_source(
    layer: QgsRasterLayer | None,
    what: str,
    extent: QgsRectangle | None = None,
    feedback=None,
    folder: str | None = None,
    pixel: tuple[float, float] | None = None,
) -> str:
    """A GDAL source for any raster layer (the engine reads rasters with GDAL only): a GDAL layer's own
    source; an XYZ layer's GDAL WMS description (an .xml file in `folder`); any other layer read block by
    block by QGIS (in this thread) into a temporary GeoTIFF over `extent` (layer CRS; default its extent)
    in `folder`, at `pixel` (layer units) when the layer has no pixel size of its own.

    Shared by the algorithms and the dialogs; `what` names the parameter or widget.
    """
    if layer is None:
        raise GeoSegError(f"{what}: choose a raster layer (none given, or it could not be opened).")
    if layer.providerType() == "gdal":
        return layer.source()
    folder = folder or tempfile.mkdtemp(prefix=COPY_PREFIX)
    if is_xyz(layer):
        return write_xyz_description(layer, folder)
    return render_to_geotiff(layer, extent or layer.extent(), os.path.join(folder, "layer.tif"), feedback, pixel)


def extent_in_layer_crs(layer: QgsRasterLayer, extent: str | None) -> QgsRectangle | None:
    """Core's EXTENT text ('xmin,xmax,ymin,ymax [AUTHID]'; no CRS: the layer's) as a rectangle in the
    layer's CRS; None when empty."""
    if not extent:
        return None
    from ..core.extent import parse_extent

    xmin, xmax, ymin, ymax, crs = parse_extent(extent)
    area = QgsRectangle(xmin, ymin, xmax, ymax)
    if crs:
        transform = QgsCoordinateTransform(QgsCoordinateReferenceSystem(crs), layer.crs(), QgsProject.instance())
        area = transform.transformBoundingBox(area)
    return area


def layer_source(
    layer: QgsRasterLayer, folder: str, extent: str | None = None, resolution: str = "auto", pixel_size=None, card=None
) -> tuple[str, LayerCopy | None]:
    """For a dialog (main thread): (GDAL source, None) for a layer GDAL reads (an XYZ layer's description
    written into `folder`); otherwise (the path its copy will have, the prepared `LayerCopy` over EXTENT,
    at the working pixel size when the layer has none) for a task to write (`copied_then`)."""
    if reads_directly(layer):
        return gdal_raster_source(layer, "Input raster", folder=folder), None
    area = extent_in_layer_crs(layer, extent) or layer.extent()
    pixel = None if has_pixel_size(layer) else working_pixel(layer, area, resolution, pixel_size, card)
    copy = prepare_copy(layer, area, os.path.join(folder, "layer.tif"), pixel)
    return copy.path, copy


def write_xyz_description(layer: QgsRasterLayer, folder: str) -> str:
    """The XYZ layer's GDAL WMS description as xyz.xml in `folder` (tiles cached beside it)."""
    path = os.path.join(folder, "xyz.xml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(xyz_wms_xml(layer, os.path.join(folder, "tiles")))
    return path


# ---------------------------------------------------------------- Processing parameters
def raster_path(alg, parameters, name: str, context, feedback=None) -> str:
    """A GDAL source of a raster layer parameter (see `gdal_raster_source`). A layer QGIS must read itself
    is copied over the algorithm's EXTENT (when it has one) into Processing's temporary folder, in this
    thread with `feedback`'s progress and cancel; the copy was prepared on the main thread when the
    algorithm's prepareAlgorithm called `prepare_processing_copy` (alg.prepared_copies)."""
    try:
        copy = getattr(alg, "prepared_copies", {}).get(name) or prepare_processing_copy(alg, parameters, name, context)
        if copy is not None:
            if feedback is None:
                return copy.write()
            return copy.write(lambda f: feedback.setProgress(100.0 * f), feedback.isCanceled)
        layer = alg.parameterAsRasterLayer(parameters, name, context)
        if alg.parameterDefinition("EXTENT") is None:  # only segment reads a window of any layer
            return raster_source(layer, name)
        if layer is not None and is_xyz(layer):  # its GDAL WMS description (and tile cache)
            return write_xyz_description(
                layer, tempfile.mkdtemp(prefix=COPY_PREFIX, dir=QgsProcessingUtils.tempFolder())
            )
        return gdal_raster_source(layer, name)  # a file
    except GeoSegError as e:
        raise QgsProcessingException(str(e)) from None


def prepare_processing_copy(alg, parameters, name: str, context) -> LayerCopy | None:
    """For an algorithm with EXTENT (segment): the `LayerCopy` of the raster layer parameter `name` when
    GDAL cannot read it (None otherwise), over EXTENT (required for a web layer), at the working pixel
    size when the layer has none. Call it on the main thread (prepareAlgorithm): it clones the provider."""
    if alg.parameterDefinition("EXTENT") is None:
        return None
    try:
        layer = alg.parameterAsRasterLayer(parameters, name, context)
        given = parameters.get("EXTENT") not in (None, "")
        if layer is not None and is_web(layer) and not given:
            raise GeoSegError(f"EXTENT: give the area to segment of the web layer '{layer.name()}'.", param="EXTENT")
        if layer is None or reads_directly(layer):
            return None
        extent = alg.parameterAsExtent(parameters, "EXTENT", context, layer.crs()) if given else layer.extent()
        pixel = None if has_pixel_size(layer) else _processing_pixel(alg, parameters, context, layer, extent)
        folder = tempfile.mkdtemp(prefix=COPY_PREFIX, dir=QgsProcessingUtils.tempFolder())
        try:
            return prepare_copy(layer, extent, os.path.join(folder, "layer.tif"), pixel)
        except GeoSegError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    except GeoSegError as e:
        raise QgsProcessingException(str(e)) from None


def _processing_pixel(
    alg, parameters, context, layer: QgsRasterLayer, area: QgsRectangle
) -> tuple[float, float] | None:
    """`working_pixel` from segment's RESOLUTION, PIXEL_SIZE and the model's card (read only for a layer
    without a pixel size of its own)."""
    from ..core.backends import read_model
    from ..core.params import SegmentParams, spec

    resolution = spec(SegmentParams, "resolution").values[alg.parameterAsEnum(parameters, "RESOLUTION", context)]
    size = alg.parameterAsDouble(parameters, "PIXEL_SIZE", context)
    card = None
    if not (resolution == "size" and size):
        card_path = alg.parameterAsFile(parameters, "CARD", context) or None
        index = alg.parameterAsInt(parameters, "OUTPUT_INDEX", context)
        card = read_model(alg.parameterAsFile(parameters, "MODEL", context), card_path, index).card
    return working_pixel(layer, area, resolution, size, card)


def remove_copy(source: str) -> None:
    """Remove the folder of a layer copy made by `raster_path` (nothing for any other source): Processing's
    temporary folder lives until QGIS quits, and a copy may be large."""
    folder = os.path.dirname(source)
    if os.path.basename(folder).startswith(COPY_PREFIX) and os.path.dirname(folder) == QgsProcessingUtils.tempFolder():
        shutil.rmtree(folder, ignore_errors=True)


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
