"""The QGIS adapter: QGIS layers → sources the GDAL/OGR engine in `core` opens, and the styling of
the rasters it writes. The one layer between core and the two front-ends (`algorithms`, `ui`),
which both use it and never each other."""
