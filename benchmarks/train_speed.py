"""Training input speed: the chip loader (DataLoader over the packed chips, core.packed, then the
batch augmentation, as the training loop feeds a step) against training steps of the demo's model.

Both run in fresh processes on the same exported chips: 256-px chips, batch 8, UNet with base
width 16, Dice+CE, AdamW (train's defaults apart from the width). The loader must deliver
samples at least 3× as fast as the step consumes them, or training waits on disk.
"""

from __future__ import annotations

import os
import tempfile

from .common import run_child
from .export_memory import write_labels, write_raster

CHIP, BATCH = 256, 8

LOADER = r"""
import json, sys, time
import torch
from geoseg.core.dataset import augment_batch, open_chips
from geoseg.core.packed import collate_batch, training_datasets
from geoseg.core.trainer import default_workers
chips, epochs = sys.argv[1], int(sys.argv[2])
folder = open_chips(chips)
workers = default_workers()
train_ds, _ = training_datasets(folder)  # as training reads them: packed (core.packed), a batch per read
loader = torch.utils.data.DataLoader(train_ds, batch_size=int(sys.argv[3]), shuffle=True, collate_fn=collate_batch,
                                     num_workers=workers, generator=torch.Generator().manual_seed(0))
gen = torch.Generator().manual_seed(1)
t0 = time.perf_counter()
n = 0
for _ in range(epochs):
    for x, y in loader:
        n += len(x)
load = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(epochs):
    for x, y in loader:
        augment_batch(x, y, gen)
both = time.perf_counter() - t0
print(json.dumps({"samples": n, "load_seconds": load, "seconds": both, "workers": workers}))
"""

STEP = r"""
import json, sys, time
import torch
from geoseg.core.dataset import ChipDataset, open_chips
from geoseg.core.losses import build_loss
from geoseg.models.registry import build_model
chips, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
folder = open_chips(chips)
torch.manual_seed(0)
data = ChipDataset(folder, folder.train)
batch = min(batch, len(data))
x = torch.stack([data[i][0] for i in range(batch)])
y = torch.stack([data[i][1] for i in range(batch)])
model = build_model("unet", folder.in_channels, len(folder.classes), base_width=16).train()
loss_fn = build_loss("dice_ce", len(folder.classes))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()

step()  # warm-up
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"samples": steps * batch, "seconds": time.perf_counter() - t0,
                  "threads": torch.get_num_threads()}))
"""


def run(size: int = 2048, epochs: int = 3, steps: int = 6) -> dict:
    from geoseg.core.chips import ExportParams, export_chips

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        raster, labels, chips = (os.path.join(tmp, n) for n in ("r.tif", "l.gpkg", "chips"))
        write_raster(raster, size)
        write_labels(labels, size)
        exported = export_chips(ExportParams(raster, labels, chips, class_field="cls", chip_size=CHIP))
        loader = run_child(LOADER, chips, str(epochs), str(BATCH))
        step = run_child(STEP, chips, str(steps), str(BATCH))
    return {"chips": exported.n_train, "loader": loader, "step": step}


def report(r: dict) -> list[str]:
    lo, st = r["loader"], r["step"]
    load_only = lo["samples"] / lo["load_seconds"]
    feed = lo["samples"] / lo["seconds"]
    train = st["samples"] / st["seconds"]
    return [
        "## Training input speed",
        "",
        f"{r['chips']} training chips of {CHIP} px (4-band UInt16 GeoTIFFs written by export), batch {BATCH}; "
        f"loader: DataLoader over the packed chips with {lo['workers']} worker processes (train's default here), "
        f"steps: UNet base width 16, Dice+CE, AdamW, forward + backward + update on the CPU "
        f"({st['threads']} threads).",
        "",
        "| stage | samples | seconds | samples/s |",
        "|---|---|---|---|",
        f"| loader (read + normalise) | {lo['samples']} | {lo['load_seconds']:.2f} | {load_only:.0f} |",
        f"| loader + batch augmentation | {lo['samples']} | {lo['seconds']:.2f} | {feed:.0f} |",
        f"| training step | {st['samples']} | {st['seconds']:.1f} | {train:.1f} |",
        "",
        f"- loader (with augmentation) / training step: **{feed / train:.0f}×** (target ≥ 3)",
        "",
    ]
