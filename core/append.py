"""Many scenes, one dataset (exportchips APPEND): the existing chips folder read back, checked against
the new scene, and the new chips swapped in so that an interrupted append leaves the folder as it was.

The folder keeps, per scene and split, the exact pixel moments of its chips (dataset.json `moments`),
so the band mean/std over all scenes are merged from stored sums, never averaged from means; the class
counts come from chips.csv's per-chip `class_V` columns.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from osgeo import gdal

from .errors import GeoSegError
from .paths import inside
from .raster import RasterInfo
from .staging import partial_prefix, raise_if_disk_full
from .stats import Moments, combine

OUT = "OUTPUT_DIR"


@dataclass
class Existing:
    """A GeoSeg chips folder as written by an earlier export."""

    folder: str
    dataset: dict
    rows: list[dict]  # chips.csv rows, each with a `scene`
    moments: dict[str, dict[str, Moments]]  # scene → split → moments

    @property
    def scenes(self) -> list[str]:
        return list(self.moments)

    @property
    def class_values(self) -> list[int]:
        return [int(c["value"]) for c in self.dataset["classes"]]


def scene_id(path: str, taken: list[str]) -> str:
    """A short id for a scene from its raster's file name, unique among `taken`."""
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "scene"
    sid, i = base, 2
    while sid in taken:
        sid, i = f"{base}_{i}", i + 1
    return sid


def _not_geoseg(folder: str, why: str) -> GeoSegError:
    return GeoSegError(
        f"{OUT}: {folder} is not a GeoSeg chips folder ({why}); APPEND adds a scene to a folder written by "
        "Export training chips. Leave APPEND off to start a new folder.",
        param=OUT,
    )


def open_existing(folder: str) -> Existing:
    """Read and check the chips folder to append to (GeoSegError naming OUTPUT_DIR otherwise)."""
    if not os.path.isdir(folder):
        raise GeoSegError(f"{OUT}: {folder} does not exist; APPEND adds to an existing chips folder.", param=OUT)
    json_path, csv_path = os.path.join(folder, "dataset.json"), os.path.join(folder, "chips.csv")
    for path in (json_path, csv_path):
        if not os.path.isfile(path):
            raise _not_geoseg(folder, f"no {os.path.basename(path)}")
    try:
        with open(json_path, encoding="utf-8") as f:
            dataset = json.load(f)
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (ValueError, csv.Error) as e:
        raise _not_geoseg(folder, f"its dataset.json or chips.csv cannot be read: {e}") from None
    if not isinstance(dataset, dict) or "geoseg_version" not in dataset or "classes" not in dataset:
        raise _not_geoseg(folder, "dataset.json was not written by GeoSeg")
    if not rows or not {"image", "mask", "split", "xoff", "yoff"} <= set(rows[0]):
        raise _not_geoseg(folder, "chips.csv lists no chips")
    stored = dataset.get("moments")
    if not isinstance(stored, dict) or not stored:
        raise GeoSegError(
            f"{OUT}: {folder} was written by an older GeoSeg, without the per-scene pixel sums that APPEND "
            "merges; export that scene again, then append to the new folder.",
            param=OUT,
        )
    moments = {s: {k: Moments.from_json(v) for k, v in splits.items()} for s, splits in stored.items()}
    first = next(iter(moments))
    for r in rows:
        r.setdefault("scene", first)
        r["scene"] = r["scene"] or first
        inside(folder, r["image"], "OUTPUT_DIR: chips.csv image", OUT)  # paths read from a data file stay inside
        inside(folder, r["mask"], "OUTPUT_DIR: chips.csv mask", OUT)
    return Existing(folder, dataset, rows, moments)


def check_scene(ex: Existing, info: RasterInfo, chip_size: int, background: int) -> None:
    """Refuse a scene that cannot share the folder's chips: other bands, data type, chip size, background."""
    d = ex.dataset

    def refuse(text: str, param: str = "INPUT") -> GeoSegError:
        return GeoSegError(f"{param}: {text} The new scene must match to be appended to {ex.folder}.", param=param)

    if int(d.get("in_channels", -1)) != info.band_count:
        raise refuse(f"the raster has {info.band_count} bands, but the chips folder's images have {d['in_channels']}.")
    dtype = gdal.GetDataTypeName(info.gdal_type)
    if d.get("data_type") != dtype:
        raise refuse(f"the raster's data type is {dtype}, but the chips folder's images are {d.get('data_type')}.")
    if int(d.get("chip_size", -1)) != chip_size:
        raise refuse(
            f"CHIP_SIZE is {chip_size}, but the chips folder's chips are {d.get('chip_size')} pixels.", "CHIP_SIZE"
        )
    if int(d.get("background", background)) != background:
        raise refuse(f"BACKGROUND is {background}, but the chips folder's is {d.get('background')}.", "BACKGROUND")


def check_classes(ex: Existing, values: list[int], names: dict[int, str], source: str) -> list[dict]:
    """The folder's class table with the new scene's names filled in where it had none; GeoSegError when
    the scene holds a class value the folder does not have."""
    known = ex.class_values
    extra = sorted(set(values) - set(known))
    if extra:
        shown = ", ".join(map(str, extra[:5]))
        raise GeoSegError(
            f"{source}: class value{'s' if len(extra) > 1 else ''} {shown} of the new scene "
            f"{'are' if len(extra) > 1 else 'is'} not among the chips folder's classes "
            f"({', '.join(map(str, known))}); every scene of a dataset must use the same class values.",
            param=source,
        )
    table = [dict(c) for c in ex.dataset["classes"]]
    for c in table:
        v = int(c["value"])
        if v in names and c.get("name") in (f"class {v}", "", None):
            c["name"] = names[v]
    return table


def resplit_scenes(ex: Existing, scene_splits: dict[str, str]) -> dict[str, dict[str, Moments]]:
    """Existing chips moved with their whole scene (the per-scene split): rows and moments re-keyed."""
    bands = len(ex.dataset["bands"])
    out: dict[str, dict[str, Moments]] = {}
    for scene, splits in ex.moments.items():
        split = scene_splits[scene]
        out[scene] = {split: combine(list(splits.values()), bands)}
    for r in ex.rows:
        r["split"] = scene_splits[r["scene"]]
    return out


# ------------------------------------------------------------------ the swap
def stage_in(folder: str) -> str:
    """A hidden staging folder inside `folder` for the new chips, chips.csv and dataset.json; the
    stale ones of killed runs are removed by staging.remove_stale_outputs(chips.csv)."""
    try:
        return tempfile.mkdtemp(prefix=partial_prefix(os.path.join(folder, "chips.csv")), dir=folder)
    except OSError as e:
        raise GeoSegError(f"{OUT}: cannot write in {folder}: {e.strerror}.", param=OUT) from None


def _staged_chips(stage: str) -> list[str]:
    """The chip files staged for an append, relative to the staging folder."""
    out = []
    for root, _, files in os.walk(stage):
        out += [os.path.relpath(os.path.join(root, f), stage) for f in files]
    return sorted(r for r in out if r not in ("chips.csv", "dataset.json"))


def _take_back(backups: list[tuple[str, str]], moved: list[str]) -> None:
    """Undo a failed swap as far as the file system lets us: the old dataset.json/chips.csv back, the
    moved chips removed (each step on its own, so one failure does not stop the others)."""
    for backup, target in reversed(backups):
        try:
            os.replace(backup, target)
        except OSError:
            pass
    for target in reversed(moved):
        try:
            os.remove(target)
        except OSError:
            pass


def commit(stage: str, folder: str) -> None:
    """Move the staged chip files into `folder`, then replace dataset.json and chips.csv. On any failure
    everything moved so far is taken back, so the folder is as it was."""
    moved: list[str] = []
    backups: list[tuple[str, str]] = []
    try:
        new_files = _staged_chips(stage)
        for rel in new_files:
            if os.path.lexists(os.path.join(folder, rel)):
                raise GeoSegError(f"{OUT}: {rel} already exists in {folder}; GeoSeg never overwrites.", param=OUT)
        for rel in new_files:
            target = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(os.path.join(stage, rel), target)
            moved.append(target)
        for name in ("dataset.json", "chips.csv"):
            backup = os.path.join(stage, name + ".old")
            os.link(os.path.join(folder, name), backup)
            backups.append((backup, os.path.join(folder, name)))
            os.replace(os.path.join(stage, name), os.path.join(folder, name))
    except BaseException as e:
        _take_back(backups, moved)
        shutil.rmtree(stage, ignore_errors=True)
        raise_if_disk_full(OUT, e)
        raise
    shutil.rmtree(stage, ignore_errors=True)
