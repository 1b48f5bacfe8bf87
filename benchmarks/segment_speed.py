"""Segment speed: end-to-end `segment` against the bare model and a naive geoInfer-style loop.

All three run on the same raster, tiles and model (a UNet with base width 16, the demo's
model, random weights; 4-band UInt16 raster), each in a fresh process, so the ratios compare
like with like on whatever machine runs them:

- bare model: the same onnxruntime session options, lanes (core.backends model_lanes) and batch
  size as `segment`, tiles already in memory (the run's first two batches of tiles, cycled: a
  dense network's cost does not depend on pixel values). It is the physical limit of this machine for this model.
- naive: the course's geoInfer written in Python: the whole raster read into memory twice as
  float32, the torch model at batch 1, a sequential tile loop over ceil(W / stride) ×
  ceil(H / stride) tiles (those past the edge shifted back to end on it, so edge tiles are
  predicted twice), arg-max, the tile centre written into an in-memory map, written with GDAL
  at the end.
"""

from __future__ import annotations

import os
import tempfile

from .common import BARE_LOOP, NAIVE_TAIL, run_child
from .export_memory import write_raster

BANDS, CLASSES, CHIP = 4, 5, 256
STRIDE, CROP = CHIP // 2, CHIP // 8  # the pre-local-rule defaults, set explicitly

SEGMENT = r"""
import json, sys
from geoseg.core.predict import SegmentParams, segment
raster, model, out, batch = sys.argv[1:5]
# the bare run's tiles (chip 256, stride 128, crop 32): core.tiling's default for a local model differs
tiles = dict(chip_size=256, stride_x=128, stride_y=128, crop=32)
r = segment(SegmentParams(raster, model, out, batch_size=int(batch), **tiles))
print(json.dumps({"tiles": r.tiles, "seconds": r.seconds, "batch": r.batch_size, "provider": r.provider,
                  "peak_kb": hwm()}))
"""

BARE = (
    r"""
import json, sys, time
import numpy as np
from geoseg.core.backends import model_lanes, open_backend, read_model_card
from geoseg.core.grid import make_tiling
from geoseg.core.raster import open_raster, raster_info, read_window
from geoseg.core.grid import Window
raster, model, batch, tiles = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
card = read_model_card(model)
chip = card.chip_size
engine = open_backend(model, card, "onnxruntime", "auto", chip)
ds = open_raster(raster)
info = raster_info(ds, raster)
mean = np.asarray(card.normalization.mean, np.float32)[:, None, None]
std = np.asarray(card.normalization.std, np.float32)[:, None, None]
t = make_tiling(info.width, info.height, chip, chip // 2, chip // 2, chip // 8)
batches = []
for b in range(2):
    xs = t.xs[b * batch:(b + 1) * batch] or t.xs[:batch]
    pix = [read_window(ds, info, Window(x, 0, chip, chip))[0] for x in xs]
    batches.append(((np.stack(pix).astype(np.float32) - mean) / std).astype(np.float32))
lanes = model_lanes(engine)
"""
    + BARE_LOOP
)

NAIVE = (
    r"""
import json, math, sys, time
import numpy as np, torch
from osgeo import gdal
from geoseg.core.card import ModelCard
from geoseg.models.registry import build_model
raster, weights, out, card_path = sys.argv[1:5]
card = ModelCard.from_json(open(card_path).read(), card_path)
chip, stride, crop = card.chip_size, card.chip_size // 2, card.chip_size // 8
t0 = time.perf_counter()
net = build_model("unet", card.in_channels, card.num_classes, base_width=16)
net.load_state_dict(torch.load(weights, weights_only=True))
net.eval()
src = gdal.Open(raster)
image = src.ReadAsArray().astype(np.float32)  # the whole raster, as float
template = src.ReadAsArray().astype(np.float32)  # read again as the output template (as geoInfer does)
bands, height, width = image.shape
mean = np.asarray(card.normalization.mean, np.float32)[:, None, None]
std = np.asarray(card.normalization.std, np.float32)[:, None, None]
result = np.zeros((height, width), np.uint8)
tiles = 0
for r in range(math.ceil(height / stride)):
    y = min(r * stride, height - chip)
    for c in range(math.ceil(width / stride)):
        x = min(c * stride, width - chip)
        tile = (image[:, y:y + chip, x:x + chip] - mean) / std
        with torch.no_grad():
            logits = net(torch.from_numpy(tile[None]))
        cls = logits.argmax(dim=1)[0].numpy().astype(np.uint8)
"""
    + NAIVE_TAIL
)


def unet_model(folder: str) -> tuple[str, str, str]:
    """The demo's model (UNet, base width 16) with random weights: .onnx with a card, the torch
    weights for the naive loop, and the card as JSON."""
    import torch

    from geoseg.core.card import ModelCard
    from geoseg.core.checkpoint import save_onnx
    from geoseg.models.registry import build_model

    torch.manual_seed(0)
    net = build_model("unet", BANDS, CLASSES, base_width=16).eval()
    card = ModelCard.from_dict(
        {
            "classes": [{"value": i, "name": f"class {i}", "color": "#336699"} for i in range(CLASSES)],
            "bands": list(range(1, BANDS + 1)),
            "in_channels": BANDS,
            "chip_size": CHIP,
            "normalization": {"mean": [2000.0] * BANDS, "std": [1000.0] * BANDS},
        }
    )
    onnx_path, weights, card_path = (os.path.join(folder, n) for n in ("unet.onnx", "unet.weights.pt", "card.json"))
    save_onnx(onnx_path, net, card)
    torch.save(net.state_dict(), weights)
    with open(card_path, "w") as f:
        f.write(card.to_json())
    return onnx_path, weights, card_path


def run(size: int = 4096, batch: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        model, weights, card = unet_model(tmp)
        raster = os.path.join(tmp, "r.tif")
        write_raster(raster, size, BANDS)
        seg = run_child(SEGMENT, raster, model, os.path.join(tmp, "seg.tif"), str(batch))
        bare = run_child(BARE, raster, model, str(seg["batch"]), str(seg["tiles"]))
        naive = run_child(NAIVE, raster, weights, os.path.join(tmp, "naive.tif"), card)
        from osgeo import gdal

        a = gdal.Open(os.path.join(tmp, "seg.tif")).ReadAsArray()
        b = gdal.Open(os.path.join(tmp, "naive.tif")).ReadAsArray()
        agree = float((a == b).mean())
    return {"size": size, "segment": seg, "bare": bare, "naive": naive, "agree": agree, "auto": batch == 0}


def naive_ceiling(r: dict) -> float:
    """Naive time over the bare model's time for segment's tiles: segment's best possible ratio."""
    bare = r["bare"]
    return r["naive"]["seconds"] / (r["segment"]["tiles"] * bare["seconds"] / bare["tiles"])


def report(r: dict) -> list[str]:
    seg, bare, naive = r["segment"], r["bare"], r["naive"]
    size = r["size"]
    mpx = size * size / 1e6

    def tps(x: dict) -> float:
        return x["tiles"] / x["seconds"]

    to_bare = tps(seg) / tps(bare)
    to_naive = naive["seconds"] / seg["seconds"]
    ceiling = naive_ceiling(r)
    return [
        "## Segment speed",
        "",
        f"A {size}² 4-band UInt16 raster, UNet (base width 16, 4 levels, random weights) exported to ONNX, "
        f"chip {CHIP}, stride {STRIDE}, crop {CROP} (the defaults before the local rule, set explicitly), "
        f"class map only; segment's batch size "
        f"{seg['batch']} ({'chosen automatically' if r['auto'] else 'explicit'}), {seg['provider']}. "
        "Each run is a fresh process.",
        "",
        "| run | tiles | seconds | tiles/s | Mpx/s | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| segment, end to end | {seg['tiles']} | {seg['seconds']:.1f} | {tps(seg):.1f} | "
        f"{mpx / seg['seconds']:.2f} | {seg['peak_kb'] / 1024:.0f} MB |",
        f"| bare model, batch {seg['batch']}, tiles in memory | {bare['tiles']} | {bare['seconds']:.1f} | "
        f"{tps(bare):.1f} | – | – |",
        f"| naive geoInfer loop (torch, batch 1) | {naive['tiles']} | {naive['seconds']:.1f} | {tps(naive):.1f} | "
        f"{mpx / naive['seconds']:.2f} | {naive['peak_kb'] / 1024:.0f} MB |",
        "",
        f"- segment / bare model throughput (tiles/s): **{to_bare:.2f}** (target ≥ 0.85)",
        f"- segment / naive (time for the same map): **{to_naive:.2f}×** (target ≥ 3)",
        f"- bare model / naive: {ceiling:.2f}× (the time the bare model needs for segment's tiles against the naive "
        "loop's time: the most any pipeline around this model can reach against the naive loop on this machine)",
        f"- class maps of segment and the naive loop agree on {100 * r['agree']:.2f} % of pixels "
        "(the naive loop has no nodata handling and runs torch rather than onnxruntime)",
        "",
    ]
