"""GeoSeg engine: pure Python over GDAL, numpy (and later torch). No qgis imports here."""

__version__ = "0.2.0"  # keep equal to metadata.txt (a test checks)
