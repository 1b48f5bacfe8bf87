"""QGIS layers → paths the GDAL/OGR engine can open, for the dialogs."""

from __future__ import annotations

import os
import tempfile

from qgis.core import QgsProject, QgsProviderRegistry, QgsRasterLayer, QgsVectorFileWriter, QgsVectorLayer

from ..algorithms.layers import gdal_raster_source
from ..core.errors import GeoSegError


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
        layer, os.path.join(folder, "labels.gpkg"), QgsProject.instance().transformContext(), options)
    if error != QgsVectorFileWriter.NoError:
        raise GeoSegError(f"Label polygons: could not copy '{layer.name()}' to a temporary GeoPackage "
                          f"({message or error}).")
    return f"{new_file}|layername={new_layer}" if new_layer else new_file


