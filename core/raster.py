"""Windowed raster I/O with GDAL: the only place that reads source pixels or writes chips."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from osgeo import gdal, osr

from .errors import GeoSegError, first_line
from .gdalx import with_gdal_exceptions
from .grid import Window

MASK_NODATA = 255  # the ignore value of every mask GeoSeg writes


class BlockGrid(NamedTuple):
    """The blocks GDAL decodes a dataset's pixels from: their size, and the dataset pixel (negative, or
    0) where the first one starts, e.g. (256, 256, -100, -40) for a window at pixel 100, 40 of a raster
    in 256² blocks. Reads of whole blocks of this grid decode each block once."""

    width: int
    height: int
    x: int = 0
    y: int = 0


@dataclass(frozen=True)
class RasterInfo:
    """What chip export and prediction need to know about a source raster."""

    path: str
    width: int
    height: int
    band_count: int
    gdal_type: int
    geotransform: tuple[float, ...]
    wkt: str
    nodata: tuple[float | None, ...]
    per_dataset_mask: bool
    blocks: BlockGrid | None = None  # when they are not the dataset's own (a window of a raster: EXTENT)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.gdal_type])

    @property
    def is_float(self) -> bool:
        return self.gdal_type in (gdal.GDT_Float32, gdal.GDT_Float64)

    @property
    def pixel_size(self) -> tuple[float, float]:
        return (abs(self.geotransform[1]), abs(self.geotransform[5]))

    @property
    def srs(self) -> osr.SpatialReference | None:
        if not self.wkt:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of a north-up raster."""
        gt = self.geotransform
        x0, x1 = gt[0], gt[0] + gt[1] * self.width
        y0, y1 = gt[3], gt[3] + gt[5] * self.height
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@with_gdal_exceptions
def open_raster(path: str, what: str = "INPUT") -> gdal.Dataset:
    """Open read-only with a message naming the parameter when GDAL cannot."""
    if not path:
        raise GeoSegError(f"{what}: no raster given.")
    try:  # also GDAL connection strings (GPKG:file:table, NETCDF:"f":var, /vsizip/...)
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as e:
        if not os.path.exists(path) and ":" not in path:
            raise GeoSegError(f"{what}: raster file not found: {path}") from None
        raise GeoSegError(f"{what}: GDAL cannot open {path} as a raster ({e}).") from None
    if ds is None or ds.RasterCount == 0:
        raise GeoSegError(f"{what}: {path} holds no raster bands.")
    missing = missing_vrt_sources(ds, path)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GeoSegError(
            f"{what}: the virtual raster {path} refers to a file that does not exist: {missing[0]}{more}; "
            "restore it, or build the VRT again.",
            param=what,
        )
    return ds


def missing_vrt_sources(ds: gdal.Dataset, path: str) -> list[str]:
    """The source files a VRT names that do not exist (GDAL opens them only when it reads pixels,
    so a missing one would fail half-way through a run)."""
    if ds.GetDriver().ShortName != "VRT":
        return []
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring((ds.GetMetadata("xml:VRT") or [""])[0])
    except ET.ParseError:
        return []
    base = os.path.dirname(os.path.abspath(path)) if os.path.exists(path) else ""
    missing: list[str] = []
    for el in root.iter("SourceFilename"):
        name = (el.text or "").strip()
        if not name or name.startswith("/vsi") or re.match(r"[A-Za-z0-9_]{2,}:", name):
            continue  # virtual file systems and connection strings (GPKG:f:t, NETCDF:"f":v): GDAL's to resolve
        full = os.path.join(base, name) if el.get("relativeToVRT") == "1" and base else name
        if not os.path.exists(full) and full not in missing:
            missing.append(full)
    return missing


DTYPES = {
    gdal.GDT_Byte: np.uint8,
    gdal.GDT_UInt16: np.uint16,
    gdal.GDT_Int16: np.int16,
    gdal.GDT_UInt32: np.uint32,
    gdal.GDT_Int32: np.int32,
    gdal.GDT_Float32: np.float32,
    gdal.GDT_Float64: np.float64,
}


@with_gdal_exceptions
def raster_info(ds: gdal.Dataset, path: str, what: str = "INPUT") -> RasterInfo:
    """Describe `ds`; refuse what chips cannot represent (rotated grids, complex types)."""
    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is None:
        raise GeoSegError(f"{what}: {path} has no georeferencing (no geotransform).")
    if gt[2] != 0 or gt[4] != 0:
        raise GeoSegError(f"{what}: {path} is rotated or sheared; warp it to a north-up grid first.")
    b1 = ds.GetRasterBand(1)
    gtype = b1.DataType
    if gtype not in DTYPES:
        raise GeoSegError(
            f"{what}: data type {gdal.GetDataTypeName(gtype)} is not supported "
            "(use Byte, (U)Int16, (U)Int32, Float32 or Float64)."
        )
    nodata = []
    for i in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(i)
        if band.DataType != gtype:
            raise GeoSegError(
                f"{what}: bands have different data types; all must be " f"{gdal.GetDataTypeName(gtype)}."
            )
        nodata.append(band.GetNoDataValue())
    flags = b1.GetMaskFlags()
    per_dataset = bool(flags & gdal.GMF_PER_DATASET) and not bool(flags & gdal.GMF_NODATA)
    return RasterInfo(
        path,
        ds.RasterXSize,
        ds.RasterYSize,
        ds.RasterCount,
        gtype,
        tuple(gt),
        ds.GetProjection() or "",
        tuple(nodata),
        per_dataset,
    )


def read_window(
    ds: gdal.Dataset, info: RasterInfo, win: Window, into: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read all bands of `win`, padded to the chip size.

    Returns (pixels [bands, h, w], valid [h, w] bool). A pixel is invalid when any band is
    nodata (or NaN), when the dataset mask says so, or when it is padding.

    `into` (pixels, valid), views of `win`'s size (no padding) in a larger buffer: GDAL decodes
    straight into them (segment's row cache: no temporary array, no second copy), and they are
    returned.
    """
    try:
        if into is None:
            data = ds.ReadAsArray(win.xoff, win.yoff, win.width, win.height)
        else:
            data = into[0]
            ds.ReadAsArray(win.xoff, win.yoff, win.width, win.height, buf_obj=data)
    except RuntimeError as e:  # a damaged file, a source of a VRT gone since it was opened
        raise GeoSegError(
            f"INPUT: reading {info.path} failed at pixels {win.xoff}, {win.yoff} ({first_line(e)}).", param="INPUT"
        ) from None
    if data.ndim == 2:
        data = data[np.newaxis]
    if into is None:
        valid = np.ones((win.height, win.width), dtype=bool)
    else:
        valid = into[1]
        valid[...] = True
    for b, nd in enumerate(info.nodata):
        if nd is not None:
            if np.isnan(nd):
                valid &= ~np.isnan(data[b])
            else:
                valid &= data[b] != nd
    if info.is_float:
        valid &= ~np.isnan(data).any(axis=0)
    if info.per_dataset_mask:
        m = ds.GetRasterBand(1).GetMaskBand().ReadAsArray(win.xoff, win.yoff, win.width, win.height)
        valid &= m > 0
    if win.pad_x or win.pad_y:
        fill = info.nodata[0] if info.nodata[0] is not None else 0
        data = np.pad(data, ((0, 0), (0, win.pad_y), (0, win.pad_x)), constant_values=fill)
        valid = np.pad(valid, ((0, win.pad_y), (0, win.pad_x)), constant_values=False)
    return data, valid


def any_valid_pixel(ds: gdal.Dataset, info: RasterInfo, rows: int = 64) -> bool:
    """Whether any pixel is valid (see read_window), reading strips until the first valid one:
    one block at the centre for an ordinary raster (a strip would decode a whole row of blocks),
    the whole raster only when it is (nearly) all nodata."""
    bw, bh = ds.GetRasterBand(1).GetBlockSize()
    w, h = min(bw, info.width), min(bh, rows, info.height)
    x, y = (info.width // 2) // bw * bw, (info.height // 2) // bh * bh
    if read_window(ds, info, Window(min(x, info.width - w), min(y, info.height - h), w, h))[1].any():
        return True
    for y in range(0, info.height, rows):
        _, valid = read_window(ds, info, Window(0, y, info.width, min(rows, info.height - y)))
        if valid.any():
            return True
        ds.FlushCache()
    return False


def window_geotransform(gt: tuple[float, ...], win: Window) -> tuple[float, ...]:
    """Geotransform of a chip whose top-left pixel is (win.xoff, win.yoff) of the source."""
    return (
        gt[0] + win.xoff * gt[1] + win.yoff * gt[2],
        gt[1],
        gt[2],
        gt[3] + win.xoff * gt[4] + win.yoff * gt[5],
        gt[4],
        gt[5],
    )


_GTIFF = None


def write_geotiff(
    path: str, array: np.ndarray, gt: tuple[float, ...], wkt: str, gdal_type: int, nodata: float | None
) -> None:
    """Write a small [bands, h, w] (or [h, w]) array as a GeoTIFF chip.

    The file is built in memory (/vsimem) and written with Python's file I/O: a failed write (a
    full disk) then raises OSError, where GDAL's own close would fail in a destructor, whose
    exception Python only prints, leaving a truncated chip that looks complete."""
    global _GTIFF
    if _GTIFF is None:
        _GTIFF = gdal.GetDriverByName("GTiff")
    if array.ndim == 2:
        array = array[np.newaxis]
    bands, h, w = array.shape
    mem = f"/vsimem/geoseg-chip-{threading.get_ident()}.tif"  # one at a time per thread
    ds = _GTIFF.Create(mem, w, h, bands, gdal_type)
    ds.SetGeoTransform(gt)
    if wkt:
        ds.SetProjection(wkt)
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(array[i])
    ds = None  # flush and close (in memory: cannot fail for lack of space)
    f = gdal.VSIFOpenL(mem, "rb")
    try:
        gdal.VSIFSeekL(f, 0, os.SEEK_END)
        size = gdal.VSIFTellL(f)
        gdal.VSIFSeekL(f, 0, os.SEEK_SET)
        data = gdal.VSIFReadL(1, size, f)
    finally:
        gdal.VSIFCloseL(f)
        gdal.Unlink(mem)
    with open(path, "wb") as out:
        out.write(data)


@contextmanager
def pam_enabled() -> Iterator[None]:
    """GDAL's .aux.xml sidecars on for this thread, even where the process switched them off
    to keep QGIS from writing beside the user's inputs: class names of a GeoTIFF live there."""
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "YES")
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)


@with_gdal_exceptions
def category_names(path: str) -> dict[int, str]:
    """Class value → name from a class raster's category names (empty when it has none)."""
    with pam_enabled():
        ds = gdal.Open(path, gdal.GA_ReadOnly)
        ds.GetGeoTransform()  # GDAL 3.6's GTiff reads the .aux.xml lazily, not for category names alone
        names = ds.GetRasterBand(1).GetCategoryNames() or []
    return {i: n for i, n in enumerate(names) if n}


@with_gdal_exceptions
def set_category_names(path: str, names: dict[int, str]) -> None:
    """Store class names in the raster's .aux.xml (GeoTIFF has no place for them inside)."""
    table = [""] * (max(names) + 1)
    for value, name in names.items():
        table[value] = name
    with pam_enabled():
        ds = gdal.Open(path, gdal.GA_ReadOnly)  # PAM-only changes need no write access to the TIFF
        ds.GetRasterBand(1).SetCategoryNames(table)
        ds = None
