"""The one validator of a chips folder, run before the first epoch (before any output exists).

A chips folder is user data: edited by hand, assembled from several exports, copied from
elsewhere. Everything training relies on is checked here, as a whole, so that a problem arrives
as one line naming `CHIPS:` and the file, never as a traceback from inside a batch:

- dataset.json: a JSON object; `classes` a non-empty list of {value: integer 0-254, unique;
  name: non-empty text; color: #rrggbb}; `in_channels` and `bands` consistent; `chip_size`;
  `normalization.mean`/`std` one finite number per band, every std above 0 (a constant band
  cannot be normalised; training would diverge).
- chips.csv: every image and mask path resolves inside the folder (`paths.inside`), and exists.
- every image: a raster GDAL reads, `in_channels` bands, chip_size × chip_size pixels.
- every mask: a single-band raster of the same size as its image, holding only the listed
  class values and 255 (ignore).

Cost: every chip's header is opened and every mask is read (masks are small Byte rasters;
images are not read). On the demo's dataset (a few hundred 64-128 px chips) that is well under a
second; it grows linearly, about 0.1 ms per chip for the headers plus the masks' bytes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
from osgeo import gdal

from .errors import GeoSegError, first_line
from .options import IGNORE_INDEX
from .paths import inside

COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
MAX_LISTED = 3  # files named in one message before "and N more"


@dataclass(frozen=True)
class ChipFiles:
    """One chips.csv row's files, resolved inside the folder."""

    row: int  # 1-based data row of chips.csv (the header is not counted)
    image: str
    mask: str


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _bad(text: str) -> GeoSegError:
    return GeoSegError(f"CHIPS: dataset.json {text}", param="CHIPS")


def check_description(dataset: object) -> None:
    """dataset.json's content (parsed JSON) as a whole; GeoSegError naming the first problem."""
    if not isinstance(dataset, dict):
        raise _bad(
            f"must hold a JSON object (it holds a JSON {_json_kind(dataset)}); choose a folder written by "
            "Export training chips."
        )
    _check_classes(dataset.get("classes"))
    n = dataset.get("in_channels")
    if not _is_int(n) or n < 1:
        raise _bad(f"'in_channels' must be a positive integer (got {n!r}).")
    bands = dataset.get("bands")
    if bands is not None and (not isinstance(bands, list) or len(bands) != n):
        raise _bad(f"lists {len(bands) if isinstance(bands, list) else bands!r} bands, but in_channels is {n}.")
    size = dataset.get("chip_size")
    if not _is_int(size) or size < 1:
        raise _bad(f"'chip_size' must be a positive integer (got {size!r}).")
    _check_normalization(dataset.get("normalization"), n)
    background = dataset.get("background", 0)
    if not _is_int(background):
        raise _bad(f"'background' must be an integer class value (got {background!r}).")


def _check_classes(classes: object) -> None:
    """dataset.json's `classes`: a non-empty list of {value, name, color}, values unique."""
    if classes is None:
        raise _bad("has no 'classes' list (value, name and color of each class).")
    if not isinstance(classes, list) or not classes:
        raise _bad("'classes' must be a non-empty list of {value, name, color} objects.")
    seen: dict[int, int] = {}
    for i, c in enumerate(classes, 1):
        if not isinstance(c, dict):
            raise _bad(f"class {i} must be an object with value, name and color (got {c!r}).")
        v = c.get("value")
        if not _is_int(v) or not 0 <= v <= 254:
            raise _bad(f"class {i} has value {v!r}; class values must be integers 0-254 (255 marks ignored pixels).")
        if v in seen:
            raise _bad(f"lists class value {v} twice (classes {seen[v]} and {i}); each value must be unique.")
        seen[v] = i
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _bad(f"class {i} (value {v}) needs a non-empty name (got {name!r}).")
        color = c.get("color")
        if not isinstance(color, str) or not COLOR.match(color):
            raise _bad(f"class {i} (value {v}) has color {color!r}; colours are written #rrggbb, like #1a2b3c.")


def _check_normalization(norm: object, n: int) -> None:
    """dataset.json's `normalization`: per-band finite mean and std (n bands), every std above 0."""
    if not isinstance(norm, dict):
        raise _bad("has no 'normalization' object (per-band mean and std).")
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list) or len(values) != n:
            got = f"{len(values)} values" if isinstance(values, list) else repr(values)
            raise _bad(f"normalization {key} must list one number per band ({n}, in_channels), got {got}.")
        for b, x in enumerate(values, 1):
            if not _is_number(x) or not math.isfinite(x):
                raise _bad(f"normalization {key} of band {b} is {x!r}, not a finite number; re-export the chips.")
    for b, s in enumerate(norm["std"], 1):
        if s <= 0:
            raise _bad(
                f"normalization std of band {b} is {s:g}: the band is constant in the training chips, so it "
                "cannot be normalised (and carries no information). Leave the band out, or export chips "
                "where it varies."
            )


def _json_kind(v: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def chip_files(path: str, rows: list[dict]) -> list[ChipFiles]:
    """Each row's image and mask, resolved inside `path` (refused otherwise, with the row named)."""
    out = []
    for i, r in enumerate(rows, 1):
        image = inside(path, r.get("image") or "", f"CHIPS: chips.csv row {i}, image", "CHIPS")
        mask = inside(path, r.get("mask") or "", f"CHIPS: chips.csv row {i}, mask", "CHIPS")
        out.append(ChipFiles(i, image, mask))
    missing = [p for f in out for p in (f.image, f.mask) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(os.path.relpath(p, os.path.realpath(path)) for p in missing[:MAX_LISTED])
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise GeoSegError(
            f"CHIPS: {len(missing)} chip files listed in chips.csv are missing: {shown}{more}.", param="CHIPS"
        )
    return out


def open_chip(path: str, shown: str | None = None) -> gdal.Dataset:
    """A chip file opened read-only; GeoSegError (never GDAL's RuntimeError or a None) when it is
    not a raster GDAL can read. Works with GDAL exceptions on or off."""
    shown = shown or path
    try:
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as e:
        raise GeoSegError(f"CHIPS: {shown} is not a raster GDAL can read ({first_line(e)}).", param="CHIPS") from None
    if ds is None or ds.RasterCount == 0:
        why = gdal.GetLastErrorMsg() if ds is None else "no raster bands"
        raise GeoSegError(f"CHIPS: {shown} is not a raster GDAL can read ({why or 'unknown format'}).", param="CHIPS")
    return ds


def read_array(ds: gdal.Dataset, shown: str, **kwargs) -> np.ndarray:
    """ds.ReadAsArray with a GeoSegError naming the chip when its pixels cannot be decoded."""
    try:
        a = ds.ReadAsArray(**kwargs)
    except RuntimeError as e:
        raise GeoSegError(f"CHIPS: the pixels of {shown} cannot be read ({first_line(e)}).", param="CHIPS") from None
    if a is None:
        raise GeoSegError(
            f"CHIPS: the pixels of {shown} cannot be read ({gdal.GetLastErrorMsg() or 'GDAL error'}).", param="CHIPS"
        )
    return a


def check_chips(path: str, dataset: dict, files: list[ChipFiles]) -> np.ndarray:
    """Every chip against dataset.json (bands, size) and every mask's values against its classes.

    Returns the pixel count of each mask value over all chips (int64 [256])."""
    root = os.path.realpath(path)
    n, size = dataset["in_channels"], dataset["chip_size"]
    listed = {c["value"] for c in dataset["classes"]}
    totals = np.zeros(256, dtype=np.int64)

    def rel(p: str) -> str:
        return os.path.relpath(p, root)

    def bad(text: str) -> GeoSegError:
        return GeoSegError(f"CHIPS: {text}", param="CHIPS")

    for f in files:
        image = open_chip(f.image, rel(f.image))
        if image.RasterCount != n:
            raise bad(
                f"{rel(f.image)} has {image.RasterCount} band{'s' if image.RasterCount != 1 else ''}, but "
                f"dataset.json says in_channels {n}; every image chip must have the dataset's bands."
            )
        w, h = image.RasterXSize, image.RasterYSize
        if (w, h) != (size, size):
            raise bad(
                f"{rel(f.image)} is {w} × {h} pixels, but dataset.json says chip_size {size}; every chip must "
                "have that size (chips of mixed sizes cannot be batched)."
            )
        image = None
        mask = open_chip(f.mask, rel(f.mask))
        if mask.RasterCount != 1:
            raise bad(f"{rel(f.mask)} has {mask.RasterCount} bands; a mask must have exactly one band of class values.")
        if (mask.RasterXSize, mask.RasterYSize) != (w, h):
            raise bad(
                f"{rel(f.mask)} is {mask.RasterXSize} × {mask.RasterYSize} pixels, but its image "
                f"{rel(f.image)} is {w} × {h}."
            )
        values = read_array(mask, rel(f.mask))
        mask = None
        if values.dtype != np.uint8:
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise bad(f"{rel(f.mask)} holds NaN or infinite values; masks hold integer class values.")
            lo, hi = values.min(), values.max()
            if lo < 0 or hi > 255 or (values.dtype.kind == "f" and (values != np.round(values)).any()):
                odd = lo if lo < 0 or hi <= 255 else hi
                raise bad(
                    f"{rel(f.mask)} holds the value {odd:g}, which dataset.json does not list as a class "
                    "(class values are integers 0-254, 255 = ignore)."
                )
            values = values.astype(np.uint8)
        counts = np.bincount(values.ravel(), minlength=256)
        unknown = [int(v) for v in np.flatnonzero(counts) if v != IGNORE_INDEX and int(v) not in listed]
        if unknown:
            shown = ", ".join(map(str, unknown[:5]))
            raise bad(
                f"{rel(f.mask)} holds class value{'s' if len(unknown) > 1 else ''} {shown}, which dataset.json "
                f"does not list (classes: {', '.join(str(v) for v in sorted(listed))}); add "
                f"{'them' if len(unknown) > 1 else 'it'} to dataset.json's classes or fix the mask."
            )
        totals += counts
    return totals
