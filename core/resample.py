"""The working grid of a segmentation: where the model reads the raster, and the warps on the way.

A model is trained at one pixel size and in one CRS. `plan_grid` picks the grid the model reads
(RESOLUTION: the card's pixel size and CRS, the raster's own, or PIXEL_SIZE); when it differs from
the raster's, `warped_source` reads the raster through a GDAL warped VRT on that grid (no pixel is
read until a window is asked for, so the reader streams strip by strip as before), and
`warp_to_grid` brings a map written on the working grid back onto the input's grid, nearest
neighbour, strip by strip. Nodata (the raster's nodata, mask, or outside its footprint) is carried
through both: the VRT gets an alpha band, and the map's nodata stays nodata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from osgeo import gdal, osr

from .card import ModelCard
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .gdalx import with_gdal_exceptions
from .raster import RasterInfo, open_raster, raster_info

__all__ = ["GridPlan", "flush", "plan_for", "plan_grid", "utm_zone", "warp_to_grid", "warped_source"]

GDAL_RESAMPLING = {"bilinear": "bilinear", "cubic": "cubic", "average": "average", "nearest": "near"}
SAME = 0.01  # pixel sizes within 1 % are the same grid (as the card's pixel size is rounded)
STRIP_ROWS = 256  # rows per strip of the final warp


@dataclass(frozen=True)
class GridPlan:
    """The working grid and why: `warp` False means the raster's own grid (no VRT)."""

    wkt: str  # working CRS ("" : the raster has none)
    pixel_size: tuple[float, float] | None  # None: GDAL's choice (a CRS change without a pixel size)
    warp: bool
    message: str  # one line for the dialog and the log
    crs_name: str = ""


def _srs(wkt: str) -> osr.SpatialReference:
    s = osr.SpatialReference()
    s.ImportFromWkt(wkt)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


def _name(srs: osr.SpatialReference | None) -> str:
    if srs is None:
        return "no CRS"
    code, auth = srs.GetAuthorityCode(None), srs.GetAuthorityName(None)
    return f"{auth}:{code}" if code and auth else (srs.GetName() or "a custom CRS")


def utm_zone(info: RasterInfo) -> osr.SpatialReference:
    """The WGS 84 UTM zone of a geographic raster's centre."""
    x0, y0, x1, y1 = info.extent
    src = info.srs
    assert src is not None
    lonlat = osr.SpatialReference()
    lonlat.ImportFromEPSG(4326)
    lonlat.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lon, lat, _ = osr.CoordinateTransformation(src, lonlat).TransformPoint((x0 + x1) / 2, (y0 + y1) / 2)
    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    utm = osr.SpatialReference()
    utm.ImportFromEPSG((32600 if lat >= 0 else 32700) + zone)
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return utm


def _units(srs: osr.SpatialReference | None) -> str:
    if srs is None:
        return ""
    if srs.IsGeographic():
        return "°"
    return " m" if abs(srs.GetLinearUnits() - 1.0) < 1e-9 else f" {srs.GetLinearUnitsName()}"


def _size(px: tuple[float, float], srs: osr.SpatialReference | None) -> str:
    u = _units(srs)
    return f"{px[0]:g}{u}" if abs(px[0] - px[1]) <= SAME * px[0] else f"{px[0]:g} × {px[1]:g}{u}"


def _working_crs(card: ModelCard, info: RasterInfo) -> tuple[osr.SpatialReference | None, str]:
    """The card's CRS; else a degree raster's UTM zone; else the raster's own. (srs, why)."""
    raster = info.srs
    if card.crs and card.crs.wkt:
        if raster is None:
            raise GeoSegError(
                f"INPUT has no CRS, but the model was trained in {card.crs.authid or _name(_srs(card.crs.wkt))}; "
                "assign the raster its CRS (Raster › Projections › Assign Projection), or set RESOLUTION to 1 "
                "(the raster's own grid) to segment it as it is.",
                param="INPUT",
            )
        return _srs(card.crs.wkt), "the model's CRS"
    if raster is not None and raster.IsGeographic():
        return utm_zone(info), "the raster's UTM zone"
    return raster, "the raster's CRS"


def _validate(resolution: str, pixel_size: float, output_grid: str, resampling: str) -> None:
    from .options import OUTPUT_GRID_CHOICES, RESAMPLING_CHOICES, RESOLUTION_CHOICES, values

    for name, value, choices in (
        ("RESOLUTION", resolution, RESOLUTION_CHOICES),
        ("OUTPUT_GRID", output_grid, OUTPUT_GRID_CHOICES),
        ("RESAMPLING", resampling, RESAMPLING_CHOICES),
    ):
        if value not in values(choices):
            raise GeoSegError(f"{name} must be one of {', '.join(values(choices))} (got {value}).", param=name)
    if resolution == "size" and not (pixel_size > 0 and np.isfinite(pixel_size)):
        raise GeoSegError(
            f"PIXEL_SIZE must be above 0 (map units of the working CRS) when RESOLUTION is 2 (got {pixel_size:g}).",
            param="PIXEL_SIZE",
        )


def plan_grid(
    card: ModelCard,
    info: RasterInfo,
    resolution: str = "auto",
    pixel_size: float = 0.0,
    output_grid: str = "input",
    resampling: str = "bilinear",
) -> GridPlan:
    """Where the model reads the raster (see the module's docstring); GeoSegError for bad choices."""
    _validate(resolution, pixel_size, output_grid, resampling)
    raster, own = info.srs, info.pixel_size
    here = f"this raster is {_size(own, raster)} ({_name(raster)})"
    if resolution == "raster":
        return GridPlan(info.wkt, own, False, f"{here}; GeoSeg reads it at its own pixel size (RESOLUTION 1).")
    srs, why = _working_crs(card, info)
    same_crs = srs is None or (raster is not None and bool(srs.IsSame(raster)))
    if resolution == "size":
        px: tuple[float, float] | None = (pixel_size, pixel_size)
        expects = f"PIXEL_SIZE is {pixel_size:g}{_units(srs)}"
    elif card.pixel_size:
        px = (abs(card.pixel_size[0]), abs(card.pixel_size[1]))
        expects = f"the model expects {_size(px, srs)} ({_name(srs)})"
    else:
        px = None if not same_crs else own
        expects = "the model card gives no pixel size"
    if same_crs and px is not None and all(abs(a - b) <= SAME * b for a, b in zip(own, px, strict=True)):
        return GridPlan(info.wkt, own, False, f"{expects}; {here}; GeoSeg reads it as it is.")
    wkt = srs.ExportToWkt() if srs is not None else ""
    at = f"{_size(px, srs)}" if px else "about its own resolution"
    crs = "" if same_crs else f" in {why} {_name(srs)}"
    if not card.pixel_size and resolution == "auto":
        expects += " (nor a CRS)" if not card.crs else ""
    return GridPlan(wkt, px, True, f"{expects}; {here}; GeoSeg will read it at {at}{crs}.", _name(srs))


@with_gdal_exceptions
def plan_for(card: ModelCard, raster_path: str, resolution: str = "auto", pixel_size: float = 0.0) -> GridPlan:
    """`plan_grid` for a raster file (the dialog shows its message before a run)."""
    return plan_grid(card, raster_info(open_raster(raster_path), raster_path), resolution, pixel_size)


@with_gdal_exceptions
def warped_source(
    ds: gdal.Dataset, info: RasterInfo, plan: GridPlan, resampling: str = "bilinear"
) -> tuple[gdal.Dataset, RasterInfo]:
    """A warped VRT of `ds` on the plan's grid, and its RasterInfo. Its last band is an alpha band
    (0 where the source is nodata, masked or absent), seen by `read_window` as the dataset mask;
    `band_count` counts the data bands only. Pixels are read (and warped) only window by window."""
    opts: dict = {
        "format": "VRT",
        "resampleAlg": GDAL_RESAMPLING[resampling],
        "dstAlpha": True,
        "multithread": True,
    }
    if plan.wkt:
        opts["dstSRS"] = plan.wkt
    if plan.pixel_size:
        opts.update(xRes=plan.pixel_size[0], yRes=plan.pixel_size[1], targetAlignedPixels=True)
    try:
        vrt = gdal.Warp("", ds, **opts)
    except RuntimeError as e:
        raise GeoSegError(f"INPUT: GDAL cannot warp {info.path} onto the working grid ({e}).", param="INPUT") from None
    data_bands = vrt.RasterCount - 1
    warped = replace(raster_info(vrt, info.path), band_count=data_bands, per_dataset_mask=True)
    return vrt, warped


def flush(*datasets: gdal.Dataset) -> None:
    """Drop the cached blocks of a warped VRT and of the raster under it, mask bands included
    (measured: without the mask bands' flush the cache grows with the raster's size)."""
    for ds in datasets:
        ds.FlushCache()
        for i in range(1, ds.RasterCount + 1):
            ds.GetRasterBand(i).GetMaskBand().FlushCache()


@with_gdal_exceptions
def warp_to_grid(
    src_path: str,
    sink: Callable[[np.ndarray], None],
    grid: RasterInfo,
    nodata: float,
    resampling: str = "nearest",
    progress: Progress = lambda f: None,
    cancelled: IsCancelled = lambda: False,
) -> None:
    """Stream `src_path` (a map on the working grid) onto `grid`, STRIP_ROWS rows at a time ([bands,
    rows, width] arrays) into `sink` (PyramidWriter.write of the staged output). Nodata stays nodata."""
    src = gdal.Open(src_path)
    opts: dict = {
        "format": "VRT",
        "outputBounds": grid.extent,
        "width": grid.width,
        "height": grid.height,
        "resampleAlg": GDAL_RESAMPLING[resampling],
        "srcNodata": nodata,
        "dstNodata": nodata,
    }
    if grid.wkt:
        opts["dstSRS"] = grid.wkt
    vrt = gdal.Warp("", src, **opts)
    for y in range(0, grid.height, STRIP_ROWS):
        if cancelled():
            raise Cancelled()
        n = min(STRIP_ROWS, grid.height - y)
        data = vrt.ReadAsArray(0, y, grid.width, n)
        if data.ndim == 2:
            data = data[None]
        sink(data)
        flush(vrt, src)  # the working-grid file's blocks too, read through the VRT
        progress((y + n) / grid.height)
