"""Turning Processing layer parameters into paths the GDAL/OGR engine can open."""

from __future__ import annotations

from qgis.core import QgsProcessingException, QgsRasterLayer

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
            "rasters through GDAL, so save it as a GeoTIFF first.")
    return layer.source()


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
        parameters, name, context, ["gpkg", "shp", "geojson", "fgb"], "gpkg", feedback)
    if not path:
        raise QgsProcessingException(f"{name}: no vector layer given, or it could not be opened.")
    return f"{path}|layername={layer_name}" if layer_name else path
