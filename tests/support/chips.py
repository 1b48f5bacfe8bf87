"""Tiny chips folders for training tests: a random-textured raster and the standard labels, exported by
GeoSeg's own chip export (so the folder is exactly what a user trains on)."""

from __future__ import annotations

import os

from osgeo import gdal

from geoseg.core.chips import ExportParams, export_chips
from tests.support.helpers import make_raster, standard_labels


def make_chips(
    root: str,
    width: int = 128,
    height: int = 128,
    chip: int = 32,
    validation_fraction: float = 0.25,
    bands: int = 3,
    hole: tuple[int, int, int, int] | None = None,
    dtype: int = gdal.GDT_UInt16,
    chip_format: str = "geotiff",
) -> str:
    """`(width / chip) × (height / chip)` chips of `chip` px with classes 0-3 in `root`/chips; no nodata
    unless `hole` (then those pixels are 255, ignored, in the masks); `dtype`: a GDAL type."""
    os.makedirs(root, exist_ok=True)
    raster = os.path.join(root, "scene.tif")
    make_raster(raster, width, height, bands=bands, dtype=dtype, hole=hole)
    labels = standard_labels(os.path.join(root, "labels.gpkg"))
    out = os.path.join(root, "chips")
    export_chips(
        ExportParams(
            raster,
            labels,
            out,
            class_field="cls",
            chip_size=chip,
            validation_fraction=validation_fraction,
            chip_format=chip_format,
        )
    )
    return out
