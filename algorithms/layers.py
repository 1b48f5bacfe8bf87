"""Turning Processing layer parameters into paths the GDAL/OGR engine can open."""

from __future__ import annotations

from qgis.core import QgsProcessingException


def raster_path(alg, parameters, name: str, context) -> str:
    """File path of a GDAL raster layer parameter."""
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"{name}: no raster layer given, or it could not be opened.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{name}: '{layer.name()}' is served by the {layer.providerType()} provider; GeoSeg reads "
            "rasters through GDAL, so save it as a GeoTIFF first.")
    return layer.source()


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
