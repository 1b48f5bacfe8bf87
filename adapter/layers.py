"""QGIS layers → paths the GDAL/OGR engine can open: for Processing parameters (`raster_path`,
`vector_uri`) and for the dialogs' layer pickers (`raster_source`, `vector_source`)."""

from __future__ import annotations

import os
import tempfile

from qgis.core import (
    QgsProcessingException,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ..core.errors import GeoSegError


def gdal_raster_source(layer: QgsRasterLayer | None, what: str) -> str:
    """The GDAL source of a raster layer (the engine reads rasters with GDAL only).

    Shared by the algorithms and the dialogs; `what` names the parameter or widget.
    """
    if layer is None:
        raise GeoSegError(f"{what}: choose a raster layer (none given, or it could not be opened).")
    if layer.providerType() != "gdal":
        raise GeoSegError(
            f"{what}: '{layer.name()}' is served by the {layer.providerType()} provider; GeoSeg reads "
            "rasters through GDAL, so save it as a GeoTIFF first."
        )
    return layer.source()


# ---------------------------------------------------------------- Processing parameters
def raster_path(alg, parameters, name: str, context) -> str:
    """File path of a GDAL raster layer parameter."""
    try:
        return gdal_raster_source(alg.parameterAsRasterLayer(parameters, name, context), name)
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
    """Path of a GDAL raster layer; core reads rasters with GDAL only."""
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
