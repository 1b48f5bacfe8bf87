"""Training loader speed (issue 18): samples/s delivered as batches by the per-file loader (a GDAL read
per chip, then default_collate) against the packed loader (core.packed: one memory-mapped array, a
batch per read), at 0, 1 and 2 worker processes; the batch augmentation's cost per batch on the CPU;
and the training step rate of a small model beside them, for context.

Chips: 256 px, 4-band UInt16 GeoTIFFs written with GDAL (with a mask and a nodata corner each), batch 16.
Each figure comes from a fresh child process; the chips are in the page cache (written just before),
as they are from the second epoch of a run on.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile

import numpy as np

from .common import run_child

CHIP, BANDS, BATCH = 256, 4, 16

LOADER = r"""
import json, sys, time
import torch
from geoseg.core.dataset import ChipDataset, open_chips
from geoseg.core.packed import collate_batch, training_datasets
chips, kind, workers, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
folder = open_chips(chips)
t0 = time.perf_counter()
if kind == "files":
    ds, collate = ChipDataset(folder, folder.train), None
else:
    ds, _ = training_datasets(folder)
    collate = collate_batch
prepare = time.perf_counter() - t0
loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0),
                                     num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
def epoch(limit):
    t, c, n = time.perf_counter(), time.process_time(), 0
    for b, (x, y) in enumerate(loader):
        n += len(x)
        if b + 1 == limit:
            break
    return n, time.perf_counter() - t, list(x.shape), time.process_time() - c
first = epoch(batches)
n, seconds, shape, cpu = epoch(batches)
print(json.dumps({"type": type(ds).__name__, "prepare_s": prepare, "first_samples": first[0],
                  "first_s": first[1], "samples": n, "seconds": seconds, "cpu_s": cpu, "shape": shape}))
"""

AUGMENT = r"""
import json, sys, time
import torch
from geoseg.core.dataset import augment_batch
batches = int(sys.argv[1])
gen = torch.Generator().manual_seed(1)
x = torch.randn(16, 4, 256, 256, generator=gen)
y = torch.randint(0, 3, (16, 256, 256), generator=gen)
augment_batch(x, y, gen)
t0 = time.perf_counter()
for _ in range(batches):
    augment_batch(x, y, gen)
print(json.dumps({"batches": batches, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}))
"""

STEP = r"""
import json, sys, time
import torch
from geoseg.core.losses import build_loss
from geoseg.models.registry import build_model
steps = int(sys.argv[1])
torch.manual_seed(0)
x = torch.randn(16, 4, 256, 256)
y = torch.randint(0, 3, (16, 256, 256))
model = build_model("unet", 4, 3, base_width=8, depth=3).train()
loss_fn = build_loss("dice_ce", 3)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()
step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"samples": steps * 16, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}))
"""


def write_chips(folder: str, n: int) -> None:
    """`n` chips of CHIP px (BANDS-band UInt16 image, Byte mask of 3 classes with an ignored corner),
    listed in chips.csv (a tenth for validation) and described by dataset.json."""
    from osgeo import gdal

    rng = np.random.default_rng(0)
    gtiff = gdal.GetDriverByName("GTiff")
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rows = []
    for i in range(n):
        name = f"c{i:05d}.tif"
        image = gtiff.Create(os.path.join(folder, "images", name), CHIP, CHIP, BANDS, gdal.GDT_UInt16)
        image.WriteArray(rng.integers(0, 10000, (BANDS, CHIP, CHIP), dtype=np.uint16))
        image = None
        labels = rng.integers(0, 3, (CHIP, CHIP), dtype=np.uint8)
        labels[:8, :8] = 255
        mask = gtiff.Create(os.path.join(folder, "masks", name), CHIP, CHIP, 1, gdal.GDT_Byte)
        mask.WriteArray(labels)
        mask = None
        rows.append(
            {"image": f"images/{name}", "mask": f"masks/{name}", "split": "validation" if i % 10 == 0 else "train"}
        )
    with open(os.path.join(folder, "chips.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["image", "mask", "split"])
        w.writeheader()
        w.writerows(rows)
    dataset = {
        "classes": [{"value": v, "name": f"class {v}", "color": "#10a0c0"} for v in range(3)],
        "in_channels": BANDS,
        "bands": [f"band {b + 1}" for b in range(BANDS)],
        "chip_size": CHIP,
        "normalization": {"mean": [5000.0] * BANDS, "std": [2887.0] * BANDS},
    }
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(dataset, f)


def run(chips: int = 2000, batches: int = 100, file_batches: int = 25, augment: int = 20, steps: int = 3) -> dict:
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        folder = os.path.join(tmp, "chips")
        write_chips(folder, chips)
        files = run_child(LOADER, folder, "files", "0", str(file_batches))
        packed = {w: run_child(LOADER, folder, "packed", str(w), str(batches)) for w in (0, 1, 2)}
        build = packed[0]["prepare_s"]  # the first packed child built the pack; the others reused it
    return {
        "chips": chips,
        "build_s": build,
        "files": files,
        "packed": packed,
        "augment": run_child(AUGMENT, str(augment)),
        "step": run_child(STEP, str(steps)),
        "load": [*load, os.getloadavg()[0]],  # other processes on the machine: the figures are lower then
    }


def rate(r: dict) -> float:
    return r["samples"] / r["seconds"]


def report(r: dict) -> list[str]:
    files, packed, aug, st = r["files"], r["packed"], r["augment"], r["step"]
    best = max(packed, key=lambda w: rate(packed[w]))
    ms = 1000 * aug["seconds"] / aug["batches"]
    step_rate = rate(st)

    def first(x: dict) -> float:
        return x["first_samples"] / x["first_s"]

    def cpu(x: dict, workers: int) -> str:  # the loading process's own CPU time (with workers, they load)
        return f"{x['samples'] / x['cpu_s']:.0f}" if workers == 0 else "–"

    rows = [
        f"| per-file (GDAL read per chip, default_collate) | 0 | {rate(files):.0f} | {first(files):.0f} "
        f"| {cpu(files, 0)} |"
    ]
    rows += [
        f"| packed (memory map, a batch per read) | {w} | {rate(p):.0f} | {first(p):.0f} | {cpu(p, w)} |"
        for w, p in sorted(packed.items())
    ]
    met = rate(packed[0]) >= 1500
    return [
        "## Training loader",
        "",
        f"{r['chips']} chips of {CHIP} px, {BANDS}-band UInt16 GeoTIFFs, batch {BATCH}, shuffled; samples/s "
        "delivered as batches (read, normalise, collate) to the training loop, chips in the page cache. "
        f"Packing them (core.packed, once per dataset): {r['build_s']:.1f} s. Load average before and after: "
        f"{r['load'][0]:.1f}, {r['load'][1]:.1f} on {os.cpu_count()} cores (above the core count, other "
        "processes took part of the machine and every rate below is lower by about that factor).",
        "",
        "| loader | worker processes | samples/s | first epoch samples/s | samples per CPU second |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"- packed / per-file loader, both in the training process: **{rate(packed[0]) / rate(files):.1f}×**",
        f"- packed loader in the training process (train's default on 2 cores): **{rate(packed[0]):.0f} samples/s** "
        f"(target ≥ 1500: {'met' if met else '**not met**'}); fastest with {best} worker processes. Workers hand "
        "each batch over through new shared memory, which costs more than the read itself here.",
        f"- batch augmentation (flips, rotations, photometric) on the CPU: **{ms:.1f} ms per batch of {BATCH}** "
        f"({BATCH * 1000 / ms:.0f} samples/s, {aug['threads']} threads); it runs on the training device, after "
        "the batch is moved there.",
        f"- training step, small UNet (base width 8, depth 3), batch {BATCH}, CPU ({st['threads']} threads): "
        f"{step_rate:.1f} samples/s; the packed loader delivers **{rate(packed[0]) / step_rate:.0f}×** that.",
        "",
    ]
