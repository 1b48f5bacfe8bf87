"""The chips of a training run packed into one memory-mapped array, so that a batch is one read.

Reading a chip file costs GDAL an open, a header parse and a decode; per sample that caps the
loader far below what a GPU step consumes. At training start the chips listed in chips.csv are
therefore packed, once, into `.geoseg-packed/` inside the chips folder:

- `images.npy`: [N, C, H, W] in the chips' own data type (a UInt16 chip stays 2 bytes a pixel);
- `masks.npy`: [N, H, W] uint8, the class values as in the mask files (the class mapping and the
  normalisation are applied per batch, so IGNORE_BACKGROUND or a new dataset.json need no rebuild);
- `header.json`: what was packed, and from what: chips.csv's SHA-256 and every chip file's size
  and modification time.

The pack is reused while all of these still match, and rebuilt otherwise. It is written beside
its final name and renamed when whole (core.staging), so a killed build leaves no half pack. When
it cannot be written (a read-only folder, a full disk) training reads the chip files as before,
after one log line saying why. Deleting the folder is always safe: the next run packs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from osgeo import gdal_array

from .dataset import ChipDataset, ChipsFolder, normalise
from .dataset_check import open_chip, read_array
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .gdalx import with_gdal_exceptions
from .paths import inside
from .staging import FULL, partial_prefix, remove_stale_partials, staged_path

log = logging.getLogger("geoseg")

PACK_DIR = ".geoseg-packed"
VERSION = 1
HEADROOM = 64 * 2**20  # free space left on the disk after the pack, at least
NONE_YET = "there is none yet"


class PackUnavailable(Exception):
    """The pack cannot be written here (read-only folder, full disk, ...): read the files instead."""


Key = tuple[str, str]  # (image, mask) as written in chips.csv


def _key(row: dict) -> Key:
    return (row["image"], row["mask"])


class Pack:
    """An opened, valid pack: its arrays are memory-mapped lazily (and again in each worker process)."""

    def __init__(self, path: str, header: dict) -> None:
        self.path = path
        self.header = header
        self.index: dict[Key, int] = {(a, b): i for i, (a, b) in enumerate(header["rows"])}
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def _open(self, name: str) -> np.ndarray:
        path = inside(self.path, name + ".npy", "CHIPS: the packed chips")  # no link out of the folder
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        want = self.header[name]
        if list(a.shape) != want["shape"] or a.dtype.str != want["dtype"]:
            raise GeoSegError(f"CHIPS: {self.path}/{name}.npy does not match its header; delete {self.path}.")
        return a

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = self._open("images")
        return self._images

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._masks = self._open("masks")
        return self._masks

    def __getstate__(self) -> dict:
        """Worker processes started by spawn get the path, never a copy of the mapped arrays."""
        return {**self.__dict__, "_images": None, "_masks": None}


def pack_path(folder: str) -> str:
    return os.path.join(folder, PACK_DIR)


def _csv_sha256(folder: str) -> str:
    with open(os.path.join(folder, "chips.csv"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _stat(folder: str, rel: str) -> list[int]:
    st = os.stat(inside(folder, rel, "CHIPS: chips.csv", "CHIPS"))
    return [st.st_size, st.st_mtime_ns]


def _stale_reason(folder: str, header: Any, keys: Sequence[Key]) -> str | None:
    """Why the pack described by `header` no longer fits the folder (None: it fits)."""
    if not isinstance(header, dict) or header.get("version") != VERSION:
        return "it was written by another GeoSeg version"
    if header.get("chips_csv_sha256") != _csv_sha256(folder):
        return "chips.csv changed"
    packed = {(a, b) for a, b in header["rows"]}
    if any(k not in packed for k in keys):
        return "chips.csv lists chips it does not hold"
    for rel, stat in header["files"].items():
        try:
            if _stat(folder, rel) != stat:
                return f"{rel} changed"
        except (OSError, GeoSegError):
            return f"{rel} is gone"
    return None


def open_pack(folder: ChipsFolder) -> tuple[Pack | None, str]:
    """The folder's pack when it exists and still fits chips.csv and the chip files; else (None, why)."""
    path = pack_path(folder.path)
    if not os.path.lexists(path):
        return None, NONE_YET
    try:
        resolved = inside(folder.path, PACK_DIR)
        if os.path.islink(path) or not os.path.isdir(resolved):
            return None, f"{path} is not a folder GeoSeg wrote"
        with open(inside(resolved, "header.json", "CHIPS: the packed chips"), encoding="utf-8") as f:
            header = json.load(f)
        why = _stale_reason(folder.path, header, [_key(r) for r in folder.train + folder.validation])
        if why is not None:
            return None, why
        pack = Pack(resolved, header)
        _ = pack.images, pack.masks  # opens and checks both arrays
        return pack, ""
    except (OSError, ValueError, KeyError, TypeError, GeoSegError) as e:
        return None, f"it cannot be read ({e})"


def _chip_dtype(paths: list[str]) -> np.dtype:
    """The one numpy type that holds every image chip's pixels exactly (all chips' band types)."""
    types: set[int] = set()
    for path in paths:
        ds = open_chip(path)
        types.update(ds.GetRasterBand(b + 1).DataType for b in range(ds.RasterCount))
    dtype = np.result_type(*[np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(t)) for t in types])
    if dtype.kind not in "biuf":
        raise PackUnavailable(f"its pixels are of type {dtype}, which GeoSeg does not pack")
    return dtype


def _write_npy(path: str, dtype: np.dtype, shape: tuple[int, ...]):
    """A .npy file opened for its data to be appended chip after chip (plain writes: a full disk is an
    error here, not a SIGBUS later through a memory map)."""
    f = open(path, "wb")  # closed by the caller
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    return f


def _fill(tmp: str, folder: ChipsFolder, rows: list[Key], dtype, progress: Progress, cancelled: IsCancelled):
    """Write images.npy and masks.npy in `tmp`, chip by chip; return header.json's `files`."""
    c, size, n = folder.in_channels, folder.chip_size, len(rows)
    files: dict[str, list[int]] = {}
    with (
        _write_npy(os.path.join(tmp, "images.npy"), dtype, (n, c, size, size)) as fi,
        _write_npy(os.path.join(tmp, "masks.npy"), np.dtype(np.uint8), (n, size, size)) as fm,
    ):
        for i, (image, mask) in enumerate(rows):
            if cancelled():
                raise Cancelled("Training cancelled while packing the chips; nothing was kept.")
            for rel in (image, mask):
                files[rel] = _stat(folder.path, rel)
            pixels = read_array(open_chip(inside(folder.path, image, "CHIPS: chips.csv image", "CHIPS")), image)
            labels = read_array(open_chip(inside(folder.path, mask, "CHIPS: chips.csv mask", "CHIPS")), mask)
            fi.write(np.ascontiguousarray(pixels.reshape(c, size, size), dtype=dtype).data)
            fm.write(np.ascontiguousarray(labels.reshape(size, size), dtype=np.uint8).data)
            progress((i + 1) / n)
        for f in (fi, fm):
            f.flush()
            os.fsync(f.fileno())
    return files


def _discard_old(target: str) -> None:
    """Move a stale pack out of the way (renamed first, so no reader sees it half deleted)."""
    if not os.path.lexists(target):
        return
    if os.path.islink(target) or not os.path.isdir(target):
        raise PackUnavailable(f"{target} is in the way and is not a folder GeoSeg wrote")
    old = os.path.join(os.path.dirname(target), f"{partial_prefix(target)}old-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(target, old)
    except OSError as e:
        raise PackUnavailable(f"the old pack in {target} cannot be replaced ({e.strerror})") from None
    shutil.rmtree(old, ignore_errors=True)


def _check_space(folder: str, need: int) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need + HEADROOM:
        raise PackUnavailable(f"the disk has {free / 2**20:.0f} MB free and the pack needs {need / 2**20:.0f} MB")


@with_gdal_exceptions
def build_pack(
    folder: ChipsFolder, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> Pack:
    """Pack the training and validation chips of `folder` (replacing a stale pack); PackUnavailable
    when it cannot be written there, GeoSegError naming the chip when a chip cannot be read."""
    target = pack_path(folder.path)
    started = time.time()
    remove_stale_partials(target, started - 3600)  # of builds killed over an hour ago (others may be running)
    rows = list(dict.fromkeys(_key(r) for r in folder.train + folder.validation))
    dtype = _chip_dtype([inside(folder.path, image, "CHIPS: chips.csv image", "CHIPS") for image, _ in rows])
    c, size = folder.in_channels, folder.chip_size
    need = len(rows) * size * size * (c * dtype.itemsize + 1)
    _check_space(folder.path, need)
    _discard_old(target)
    csv_sha = _csv_sha256(folder.path)
    log.info("Packing %d chips (%.0f MB) into %s, once, for fast batches.", len(rows), need / 2**20, target)
    writing = False
    try:
        with staged_path(target, "CHIPS", folder=True) as tmp:
            writing = True
            files = _fill(tmp, folder, rows, dtype, progress, cancelled)
            header = {
                "version": VERSION,
                "chips_csv_sha256": csv_sha,
                "images": {"dtype": dtype.str, "shape": [len(rows), c, size, size]},
                "masks": {"dtype": np.dtype(np.uint8).str, "shape": [len(rows), size, size]},
                "rows": [list(k) for k in rows],
                "files": files,
            }
            with open(os.path.join(tmp, "header.json"), "w", encoding="utf-8") as f:
                json.dump(header, f)
    except GeoSegError as e:
        if not writing or FULL in str(e):  # could not create the staging folder, or the disk filled up
            raise PackUnavailable(str(e)) from None
        raise
    except OSError as e:  # any other failure to write (the partial folder is gone already)
        raise PackUnavailable(f"writing {target} failed ({e.strerror or e})") from None
    log.info("Packed the chips in %.1f s.", time.time() - started)
    return Pack(target, header)


def training_pack(
    folder: ChipsFolder, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> Pack | None:
    """The folder's pack: reused when still valid, (re)built otherwise; None (after a log line saying
    why) when it cannot be written, and training reads the chip files directly."""
    pack, why = open_pack(folder)
    if pack is not None:
        log.info("Using the packed chips in %s.", pack.path)
        return pack
    if why != NONE_YET:
        log.info("Packing the chips again: %s.", why)
    try:
        return build_pack(folder, progress, cancelled)
    except PackUnavailable as e:
        pack, _ = open_pack(folder)  # another process (torchrun) may have packed it meanwhile
        if pack is not None:
            return pack
        log.warning("Cannot pack the chips in %s (%s); reading the chip files directly (slower).", folder.path, e)
        return None


def _as_tensors(image: np.ndarray, target: np.ndarray):
    import torch

    return torch.from_numpy(image), torch.from_numpy(target)


class PackedDataset(ChipDataset):
    """ChipDataset's samples, read from the pack a whole batch at a time (`__getitems__`, which torch's
    DataLoader calls with a batch's indices; use it with `collate_fn=collate_batch`).

    A batch is gathered from the memory map in file order (locality), each chip straight into its
    place in the batch and converted to float32 on the way, then normalised in one vectorised step:
    the same arithmetic as ChipDataset, so the batches are bit-identical to reading the files."""

    def __init__(self, folder: ChipsFolder, rows: list[dict], pack: Pack) -> None:
        super().__init__(folder, rows)
        self.pack = pack
        self.index = np.asarray([pack.index[_key(r)] for r in rows], dtype=np.int64)
        self.lut = folder.lut.astype(np.int64)  # mask value → class index, straight to the loss's int64

    def read_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        where = self.index[np.asarray(indices, dtype=np.int64)]
        images, masks = self.pack.images, self.pack.masks
        n, (c, h, w) = len(where), images.shape[1:]
        x = np.empty((n, c, h, w), dtype=np.float32)
        raw = np.empty((n, h, w), dtype=np.uint8)
        for j in np.argsort(where, kind="stable"):  # file order; each chip one copy, cast on the way
            x[j] = images[where[j]]
            raw[j] = masks[where[j]]
        return normalise(x, raw, self.mean, self.std, self.lut)

    def __getitems__(self, indices: Sequence[int]):
        return _as_tensors(*self.read_batch(indices))

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


class FileBatches(ChipDataset):
    """The chip files read one by one into a batch (`__getitems__`), where no pack could be written."""

    def __getitems__(self, indices: Sequence[int]):
        pairs = [self.read(i) for i in indices]
        image = np.stack([p[0] for p in pairs])
        target = np.stack([p[1] for p in pairs]).astype(np.int64)
        return _as_tensors(image, target)


def collate_batch(batch):
    """The DataLoader's collate_fn for these datasets: `__getitems__` returns the batch already made."""
    return batch


def training_datasets(
    folder: ChipsFolder, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> tuple[ChipDataset, ChipDataset]:
    """(training, validation) datasets that fetch whole batches: from the pack, or from the files
    when the pack cannot be written. Without validation chips, validation uses the training chips."""
    pack = training_pack(folder, progress, cancelled)
    val_rows = folder.validation or folder.train
    if pack is None:
        return FileBatches(folder, folder.train), FileBatches(folder, val_rows)
    return PackedDataset(folder, folder.train, pack), PackedDataset(folder, val_rows, pack)
