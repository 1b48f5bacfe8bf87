"""Training data: the chips folder written by chip export, read through chips.csv and
normalised with dataset.json's statistics; batch augmentation in torch."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from .dataset_check import check_chips, check_description, chip_files, open_chip, read_array
from .errors import GeoSegError
from .gdalx import with_gdal_exceptions
from .options import IGNORE_INDEX
from .paths import inside


@dataclass(frozen=True)
class ChipsFolder:
    """A validated chips folder: rows per split, the dataset description and class mapping."""

    path: str
    dataset: dict
    train: list[dict]
    validation: list[dict]
    classes: list[dict]  # the classes the model predicts, in output-channel order
    lut: np.ndarray  # uint8 [256]: mask value → class index (255 = ignore)
    sha256: str

    @property
    def in_channels(self) -> int:
        return int(self.dataset["in_channels"])

    @property
    def chip_size(self) -> int:
        return int(self.dataset["chip_size"])


def check_chips_folder(path: str) -> tuple[str, str]:
    """The folder-level checks of CHIPS, reading no file (cheap enough for a dialog before it starts a
    task); returns the paths of chips.csv and dataset.json."""
    csv_path, json_path = os.path.join(path, "chips.csv"), os.path.join(path, "dataset.json")
    if os.path.isfile(path):
        raise GeoSegError(
            f"CHIPS: {path} is a file; choose the folder written by Export training chips.", param="CHIPS"
        )
    if not os.path.isdir(path):
        raise GeoSegError(
            f"CHIPS: folder not found: {path} does not exist; choose the folder written by Export training chips.",
            param="CHIPS",
        )
    for p in (csv_path, json_path):
        if not os.path.isfile(p):
            raise GeoSegError(
                f"CHIPS: {path} has no {os.path.basename(p)}; choose a folder written by Export training chips.",
                param="CHIPS",
            )
    return csv_path, json_path


def open_chips(path: str, ignore_background: bool = False) -> ChipsFolder:
    """Check the folder (chips.csv, dataset.json, every listed file) before any training."""
    csv_path, json_path = check_chips_folder(path)
    digest = hashlib.sha256()
    with open(json_path, "rb") as f:
        raw = f.read()
    digest.update(raw)
    try:
        dataset = json.loads(raw)
    except ValueError as e:
        raise GeoSegError(f"CHIPS: dataset.json is not valid JSON ({e}).", param="CHIPS") from None
    check_description(dataset)
    with open(csv_path, "rb") as f:
        digest.update(f.read())
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise GeoSegError(f"CHIPS: chips.csv cannot be read as CSV text ({e}).", param="CHIPS") from None
    if not rows or not {"image", "mask", "split"} <= set(rows[0]):
        raise GeoSegError("CHIPS: chips.csv lists no chips (or lacks the image, mask and split columns).")
    files = chip_files(path, rows)  # every path inside the folder, every file there
    background = dataset.get("background", 0)
    classes = [c for c in dataset["classes"] if not (ignore_background and c["value"] == background)]
    if len(classes) < 2:
        what = "besides the background, which is ignored" if ignore_background else "(background included)"
        raise GeoSegError(
            f"CHIPS: the dataset has {len(classes)} class {what}; a segmentation model " "needs at least 2."
        )
    counts = (dataset.get("class_pixel_counts_by_split") or {}).get("train")
    present = [c["value"] for c in classes if counts and int(counts.get(str(c["value"]), 0)) > 0]
    if counts and len(present) < 2:
        raise GeoSegError(
            f"CHIPS: only {len(present)} of its classes occurs in the training chips (values: "
            f"{', '.join(map(str, present)) or 'none'}); a segmentation model needs pixels of at "
            "least 2 classes to learn from. Label more classes, or export chips that hold them."
        )
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for i, c in enumerate(classes):
        lut[c["value"]] = i
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    if not train:
        raise GeoSegError("CHIPS: chips.csv has no training chips.")
    check_chips(path, dataset, files)  # every chip's header and every mask's values
    return ChipsFolder(path, dataset, train, val, classes, lut, digest.hexdigest())


def normalise(image: np.ndarray, raw_mask: np.ndarray, mean: np.ndarray, std: np.ndarray, lut: np.ndarray):
    """(image, target) of one chip ([C, H, W], [H, W]) or a batch ([N, C, H, W], [N, H, W]), in place on the
    float32 `image`: the one normalisation both loaders share, so the file reader and the packed reader
    give bit-identical batches. Nodata pixels (mask 255) become 0, the band mean; their target stays 255."""
    image -= mean
    image /= std
    ignored = raw_mask == IGNORE_INDEX
    if ignored.any():
        np.copyto(image, np.float32(0.0), where=np.expand_dims(ignored, -3))
    return image, lut[raw_mask]


class ChipDataset:
    """Map-style dataset of (image float32 [C, H, W], target int64 [H, W]) tensors.

    Images are normalised per band; pixels that were nodata (mask 255 in the file) are set
    to 0 (the band mean) and their target stays 255, so they are ignored by loss and metrics.
    """

    def __init__(self, folder: ChipsFolder, rows: list[dict]) -> None:
        self.folder = folder
        self.rows = rows
        norm = folder.dataset["normalization"]
        self.mean = np.asarray(norm["mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(norm["std"], dtype=np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.rows)

    @with_gdal_exceptions  # also in DataLoader worker processes
    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.rows[i]
        # read as float32 by GDAL and normalised in place: no temporary copies of the chip
        # paths checked again at every read: chips.csv may be edited while training runs
        image_path = inside(self.folder.path, row["image"], "CHIPS: chips.csv image", "CHIPS")
        mask_path = inside(self.folder.path, row["mask"], "CHIPS: chips.csv mask", "CHIPS")
        image = read_array(open_chip(image_path), row["image"], buf_type=gdal.GDT_Float32)
        if image.ndim == 2:
            image = image[None]
        raw = read_array(open_chip(mask_path), row["mask"]).astype(np.uint8, copy=False)  # checked: 0-255
        return normalise(image, raw, self.mean, self.std, self.folder.lut)

    def __getitem__(self, i: int):
        import torch

        image, target = self.read(i)
        return torch.from_numpy(image), torch.from_numpy(target.astype(np.int64))


def _dihedral(x, y, hflip, vflip, rot):
    """Per sample: flip W (`hflip`), flip H (`vflip`), then rotate by `rot` × 90°, as at most three
    whole-batch selections. Any such sequence equals [flip W] [flip H] [transpose]: a rotation by 1
    adds a W flip and a transpose, by 2 both flips, by 3 an H flip and a transpose."""
    import torch

    flip_w = hflip ^ ((rot == 1) | (rot == 2))
    flip_h = vflip ^ (rot >= 2)
    for sel, op in (
        (flip_w, lambda t: t.flip(-1)),
        (flip_h, lambda t: t.flip(-2)),
        (rot % 2 == 1, lambda t: t.transpose(-2, -1)),
    ):
        if bool(sel.all()):
            x, y = op(x), op(y)
        elif bool(sel.any()):
            sel = sel.to(x.device)
            x = torch.where(sel.view(-1, *[1] * (x.dim() - 1)), op(x), x)
            y = torch.where(sel.view(-1, *[1] * (y.dim() - 1)), op(y), y)
    return x.contiguous(), y.contiguous()


def augment_batch(x, y, generator):
    """Random flips, 90° rotations (square chips), brightness, contrast and gamma, per sample.

    Runs on the batch's device after loading (cheap, and on the GPU when there is one): the random
    numbers come from `generator` (a CPU generator, so a run draws the same on any device), the
    pixels stay where they are. Geometric transforms move image and target together; photometric
    ones touch the image only. Draws and results are those of the former per-sample loop, bit for bit.
    """
    import torch

    n = x.shape[0]

    def coin(p: float = 0.5):
        return torch.rand(n, generator=generator) < p

    hflip, vflip = coin(), coin()
    square = x.shape[-1] == x.shape[-2]
    rot = torch.randint(0, 4, (n,), generator=generator) if square else torch.zeros(n, dtype=torch.long)
    x, y = _dihedral(x, y, hflip, vflip, rot)
    dev = x.device
    shape = (n, 1, 1, 1)
    brightness = (torch.rand(shape, generator=generator) - 0.5) * 0.4 * coin().view(shape)  # ±0.2 std
    contrast = 1 + (torch.rand(shape, generator=generator) - 0.5) * 0.4 * coin().view(shape)  # ×0.8-1.2
    gamma = torch.exp((torch.rand(shape, generator=generator) - 0.5) * 0.4 * coin().view(shape))  # 0.82-1.22
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.to(dev) + mean + brightness.to(dev)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    x = ((x - lo) / span).clamp(0, 1).pow(gamma.to(dev)) * span + lo
    return x.contiguous(), y.contiguous()
