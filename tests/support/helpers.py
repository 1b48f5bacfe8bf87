"""Small GDAL/OGR fixtures written for real: GeoTIFFs and GeoPackages in tmp folders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from osgeo import gdal, ogr, osr

gdal.UseExceptions()
ogr.UseExceptions()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QGIS_PROCESS = os.path.join(REPO, "scripts", "qgis_process")
UTM = 32633
ORIGIN = (500000.0, 5300000.0)


def srs(epsg: int) -> osr.SpatialReference:
    s = osr.SpatialReference()
    s.ImportFromEPSG(epsg)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


def make_raster(
    path: str,
    width: int,
    height: int,
    bands: int = 4,
    dtype: int = gdal.GDT_UInt16,
    nodata: float | None = 0,
    hole: tuple[int, int, int, int] | None = None,
    pixel: float = 2.0,
    epsg: int | None = UTM,
    seed: int = 0,
    origin: tuple[float, float] = ORIGIN,
) -> np.ndarray:
    """Random-textured raster; `hole` = (xoff, yoff, w, h) set to nodata in every band."""
    rng = np.random.default_rng(seed)
    if dtype in (gdal.GDT_Float32, gdal.GDT_Float64):
        data = rng.normal(0.3, 0.1, (bands, height, width)).astype(np.float32)
    else:
        top = {gdal.GDT_Byte: 250, gdal.GDT_UInt16: 60000}.get(dtype, 1000)
        data = rng.integers(1, top, (bands, height, width))
    if hole is not None:
        x, y, w, h = hole
        data[:, y : y + h, x : x + w] = np.nan if nodata is not None and np.isnan(nodata) else nodata
    ds = gdal.GetDriverByName("GTiff").Create(path, width, height, bands, dtype)
    ds.SetGeoTransform((origin[0], pixel, 0, origin[1], 0, -pixel))
    if epsg:
        ds.SetProjection(srs(epsg).ExportToWkt())
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(data[b])
    ds = None
    return gdal.Open(path).ReadAsArray().reshape(bands, height, width)


def rect(x0: float, y0: float, x1: float, y1: float) -> str:
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def reproject(wkt: str, src_epsg: int = UTM, dst_epsg: int = 4326) -> str:
    """`wkt` given in `src_epsg`, as WKT in `dst_epsg`."""
    g = ogr.CreateGeometryFromWkt(wkt)
    g.Transform(osr.CoordinateTransformation(srs(src_epsg), srs(dst_epsg)))
    return g.ExportToWkt()


def make_vector(
    path: str,
    features: list[tuple[str, object]],
    *,
    src_epsg: int = UTM,
    dst_epsg: int | None = 4326,
    field: str = "cls",
    field_type: int = ogr.OFTInteger,
    geom_type: int = ogr.wkbPolygon,
    layer: str = "labels",
    names: dict[object, str] | None = None,
    name_field: str = "name",
) -> str:
    """Features given as (WKT in `src_epsg`, field value), stored reprojected to `dst_epsg`.
    With `names` (field value → text) a second, string field `name_field` holds each value's name."""
    out_srs = srs(dst_epsg) if dst_epsg else None
    ct = osr.CoordinateTransformation(srs(src_epsg), out_srs) if dst_epsg and dst_epsg != src_epsg else None
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    lyr = ds.CreateLayer(layer, out_srs, geom_type)
    lyr.CreateField(ogr.FieldDefn(field, field_type))
    if names is not None:
        lyr.CreateField(ogr.FieldDefn(name_field, ogr.OFTString))
    for wkt, value in features:
        g = ogr.CreateGeometryFromWkt(wkt)
        if ct is not None:
            g.Transform(ct)
        f = ogr.Feature(lyr.GetLayerDefn())
        if value is not None:
            f.SetField(field, value)
        if names is not None and value in names:
            f.SetField(name_field, names[value])
        f.SetGeometry(g)
        lyr.CreateFeature(f)
    ds = None
    return path


def utm_box(col0: float, row0: float, col1: float, row1: float, pixel: float = 2.0) -> str:
    """A rectangle given in pixel coordinates of a raster made by make_raster (default grid)."""
    return rect(ORIGIN[0] + col0 * pixel, ORIGIN[1] - row0 * pixel, ORIGIN[0] + col1 * pixel, ORIGIN[1] - row1 * pixel)


def standard_labels(path: str, dst_epsg: int | None = 4326) -> str:
    """Three classes, overlapping polygons, one with a hole, one crossing the raster edge."""

    def ring(x0: float, y0: float, x1: float, y1: float) -> str:
        return rect(x0, y0, x1, y1)[len("POLYGON(") : -1]

    ox, oy = ORIGIN
    donut = f"POLYGON({ring(ox + 200, oy - 20, ox + 400, oy - 180)},{ring(ox + 260, oy - 60, ox + 330, oy - 130)})"
    feats = [
        (utm_box(3.3, 5.7, 61.2, 77.9), 1),
        (utm_box(40.5, 30.5, 90.5, 120.5), 2),  # overlaps the first
        (donut, 3),
        (utm_box(180.2, 100.7, 400, 300), 2),  # crosses the right/bottom edge
    ]
    return make_vector(path, feats, dst_epsg=dst_epsg)


def rasterize_whole(raster: str, labels: str, field: str = "cls", background: int = 0) -> np.ndarray:
    """Reference mask: the whole raster grid rasterized at once by GDAL (it reprojects itself)."""
    src = gdal.Open(raster)
    mem = gdal.GetDriverByName("MEM").Create("", src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(src.GetGeoTransform())
    mem.SetProjection(src.GetProjection())
    mem.GetRasterBand(1).Fill(background)
    vds = ogr.Open(labels)
    gdal.RasterizeLayer(mem, [1], vds.GetLayer(0), options=[f"ATTRIBUTE={field}"])
    return mem.GetRasterBand(1).ReadAsArray()


def tree_snapshot(folder: str) -> dict[str, tuple[int, float]]:
    """Every file below `folder` with its size and mtime, to prove nothing was touched (training's
    packed copy of a chips folder, `.geoseg-packed/` (core.packed), is a cache, not user data)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".geoseg-packed"]
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def qgis_process(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", GDAL_PAM_ENABLED="NO")
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def python_exe() -> str:
    return sys.executable


def wait_for(dlg, app, timeout: float = 300.0) -> None:
    """Process events until a dialog's task has reported back (its finished() ran)."""
    import time

    deadline = time.monotonic() + timeout
    while dlg.task is not None:
        assert time.monotonic() < deadline, "the dialog's task did not finish in time"
        app.processEvents()
        time.sleep(0.005)


def run_and_wait(dlg, app):
    """Start a dialog's task, check the buttons while it runs, and wait for it to report back."""
    task = dlg.run()
    assert task is not None and dlg.task is task
    assert not dlg.runButton.isEnabled() and dlg.cancelButton.isEnabled()
    wait_for(dlg, app)
    return task


@contextmanager
def fresh_settings(prefix: str) -> Iterator[None]:
    """A test starts from a dialog's defaults and leaves no settings behind."""
    from qgis.core import QgsSettings

    QgsSettings().remove(prefix.rstrip("/"))
    yield
    QgsSettings().remove(prefix.rstrip("/"))


@contextmanager
def open_dialog(cls, app, iface) -> Iterator[object]:
    """A dialog for one test; a task still running at the end is cancelled and awaited."""
    dlg = cls(iface)
    try:
        yield dlg
    finally:
        if dlg.task is not None:
            dlg.cancel()
            wait_for(dlg, app)
        dlg.close()
        dlg.deleteLater()


def set_widgets(dlg, **values) -> None:
    """Set a dialog's widgets by attribute name: bool → check box, str → field combo or line
    edit, int → combo index (combo boxes) or value (spin boxes)."""
    for name, value in values.items():
        widget = getattr(dlg, name)
        if isinstance(value, bool):
            widget.setChecked(value)
        elif isinstance(value, str):
            (widget.setField if hasattr(widget, "setField") else widget.setText)(value)
        elif hasattr(widget, "setCurrentIndex"):
            widget.setCurrentIndex(value)
        else:
            widget.setValue(value)


CLASS_GT = (ORIGIN[0], 2.0, 0.0, ORIGIN[1], 0.0, -2.0)


def write_classes(path: str, values: np.ndarray, nodata: int | None, gt=CLASS_GT, epsg: int = UTM) -> str:
    """A Byte class raster with exactly these values (the default grid of make_raster)."""
    ds = gdal.GetDriverByName("GTiff").Create(path, values.shape[1], values.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    ds.SetProjection(srs(epsg).ExportToWkt())
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(values)
    ds = None
    return path
