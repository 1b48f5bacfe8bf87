"""Segment throughput (issue 18): segment against the bare model for a light, a medium and a heavy
model, the input's decoding cost beside them, onnxruntime's thread settings, and default-tiling
segment against a naive geoInfer loop.

One 8192 × 6144 4-band UInt16 DEFLATE GeoTIFF (256² blocks) is generated once and cached in the
temporary folder (geoseg-bench-cache/); every measurement runs in a fresh process. The machine is
shared, so comparisons are interleaved (A, B, A, B, …) and the best run of each is kept.

- segment: chip 256, stride 192, crop 32, batch 8, onnxruntime, class map only.
- bare model: the same onnxruntime session (open_backend) on the same number of tiles, batch 8,
  already normalised in memory (the run's first two batches, cycled: a dense network's cost does
  not depend on the pixel values): the limit of this machine for this model.
- decode once: every block of the input read once (whole block rows, GDAL's cache flushed), the
  least any reader must spend.
- naive geoInfer: the course's loop (chip 256, stride 128, crop 50, batch 1; each tile read from
  the file on its own, normalised, predicted, its centre written into an in-memory map), run with
  the same onnxruntime model (default session options), against segment with its default tiling.
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time

from .common import BARE_LOOP, NAIVE_TAIL, log_records, run_child

BANDS, CLASSES = 4, 5
WIDTH, HEIGHT = 8192, 6144
THREAD_ROWS = 2048  # rows of the thread-settings table's raster
CHIP, STRIDE, CROP, BATCH = 256, 192, 32, 8
LIGHT_EXTRA = 4  # runs more for the light model: the cheapest, and the most upset by a busy neighbour
NAIVE = {"chip": 256, "stride": 128, "crop": 50}
CACHE = os.path.join(tempfile.gettempdir(), "geoseg-bench-cache")

# the child's settings for onnxruntime's threads and the model's lanes (core.backends' defaults unless given)
THREADS = r"""
import geoseg.core.backends as backends
spin, threads, lanes = sys.argv[-3:]
if spin != "-":
    backends.INTRA_OP_SPINNING = spin == "1"
if threads != "-":
    backends.INTRA_OP_THREADS = int(threads)
if lanes != "-":
    backends.CPU_LANES = int(lanes)
"""

SEGMENT = (
    r"""
import json, logging, sys
import onnx, onnxruntime  # imported once per QGIS session, by its first run: not a cost of each run
"""
    + THREADS
    + r"""
from geoseg.core.predict import SegmentParams, segment
raster, model, out, tiling = sys.argv[1:5]
"""
    + log_records("Segmented")
    + r"""
kw = dict(chip_size=256, stride_x=192, stride_y=192, crop=32, batch_size=8) if tiling == "fixed" else {}
r = segment(SegmentParams(raster, model, out, backend="onnxruntime", **kw))
tiles, w, h, chip, sx, sy, crop, batch, _ = records[-1]
print(json.dumps({"tiles": r.tiles, "seconds": r.seconds, "chip": chip, "stride": sx, "crop": crop,
                  "batch": batch, "peak_kb": hwm()}))
"""
)

BARE = (
    r"""
import json, sys, time
import numpy as np
"""
    + THREADS
    + r"""
from geoseg.core.backends import model_lanes, open_backend, read_model_card
from geoseg.core.grid import Window
from geoseg.core.raster import open_raster, raster_info, read_window
raster, model, tiles = sys.argv[1], sys.argv[2], int(sys.argv[3])
chip, batch = 256, 8
card = read_model_card(model)
engine = open_backend(model, card, "onnxruntime", "auto", chip)
ds = open_raster(raster)
info = raster_info(ds, raster)
mean = np.asarray(card.normalization.mean, np.float32)[:, None, None]
std = np.asarray(card.normalization.std, np.float32)[:, None, None]
batches = []
for b in range(2):
    xs = range(b * batch * 192, (b + 1) * batch * 192, 192)
    pix = [read_window(ds, info, Window(x, 0, chip, chip))[0] for x in xs]
    batches.append(((np.stack(pix).astype(np.float32) - mean) / std).astype(np.float32))
lanes = model_lanes(engine)
"""
    + BARE_LOOP
)

DECODE = r"""
import json, sys, time
from osgeo import gdal
ds = gdal.Open(sys.argv[1])
bh = ds.GetRasterBand(1).GetBlockSize()[1]
t0 = time.perf_counter()
for y in range(0, ds.RasterYSize, bh):
    ds.ReadAsArray(0, y, ds.RasterXSize, min(bh, ds.RasterYSize - y))
    ds.FlushCache()
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

GEOINFER = (
    r"""
import json, math, sys, time
import numpy as np, onnxruntime as ort
from osgeo import gdal
from geoseg.core.backends import read_model_card
raster, model, out = sys.argv[1:4]
chip, stride, crop = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
card = read_model_card(model)
mean = np.asarray(card.normalization.mean, np.float32)[:, None, None]
std = np.asarray(card.normalization.std, np.float32)[:, None, None]
t0 = time.perf_counter()
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
src = gdal.Open(raster)
width, height = src.RasterXSize, src.RasterYSize
result = np.zeros((height, width), np.uint8)
tiles = 0
for c in range(math.ceil(width / stride)):
    x = min(c * stride, width - chip)
    for r in range(math.ceil(height / stride)):
        y = min(r * stride, height - chip)
        tile = (src.ReadAsArray(x, y, chip, chip).astype(np.float32) - mean) / std
        logits = session.run(None, {name: tile[None]})[0]
        cls = logits[0].argmax(axis=0).astype(np.uint8)
"""
    + NAIVE_TAIL
)


def conv_macs(widths: list[int], classes: int = CLASSES) -> int:
    """Multiply-accumulates per output pixel of 3×3 convolutions through `widths` (input bands
    first) and a 1×1 convolution to the classes."""
    return sum(9 * a * b for a, b in itertools.pairwise(widths)) + widths[-1] * classes


def _card() -> object:
    from geoseg.core.card import ModelCard

    return ModelCard.from_dict(
        {
            "classes": [{"value": i, "name": f"class {i}", "color": "#336699"} for i in range(CLASSES)],
            "bands": list(range(1, BANDS + 1)),
            "in_channels": BANDS,
            "chip_size": CHIP,
            "normalization": {"mean": [2000.0] * BANDS, "std": [1000.0] * BANDS},
        }
    )


def conv_model(path: str, width: int) -> None:
    """Three 3×3 convolutions of `width` channels (ReLU between) and a 1×1 to the classes:
    receptive radius 3, so any crop ≥ 3 gives whole-image inference."""
    import torch

    from geoseg.core.checkpoint import save_onnx

    torch.manual_seed(0)
    layers: list = []
    c = BANDS
    for _ in range(3):
        layers += [torch.nn.Conv2d(c, width, 3, padding=1), torch.nn.ReLU()]
        c = width
    net = torch.nn.Sequential(*layers, torch.nn.Conv2d(c, CLASSES, 1)).eval()
    save_onnx(path, net, _card())


def unet_model(path: str) -> None:
    """The demo's UNet (base width 16, 4 levels), random weights."""
    import torch

    from geoseg.core.checkpoint import save_onnx
    from geoseg.models.registry import build_model

    torch.manual_seed(0)
    save_onnx(path, build_model("unet", BANDS, CLASSES, base_width=16).eval(), _card())


def unet_macs() -> int:
    """The UNet's multiply-accumulates per pixel, counted on a 256² tile (convolutions only)."""
    import torch

    from geoseg.models.registry import build_model

    net = build_model("unet", BANDS, CLASSES, base_width=16).eval()
    total = 0

    def hook(m, inp, out):
        nonlocal total
        area = m.kernel_size[0] * m.kernel_size[1] // m.groups
        if isinstance(m, torch.nn.ConvTranspose2d):  # each input value times a k × k × out kernel
            total += inp[0].numel() * area * m.out_channels
        else:  # each output value from a k × k × in kernel
            total += out.numel() * area * m.in_channels

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, BANDS, 256, 256))
    return total // (256 * 256)


def input_raster(rows: int = HEIGHT) -> str:
    """The cached benchmark raster (its first `rows` rows: a copy of those, same blocks)."""
    from osgeo import gdal, osr

    os.makedirs(CACHE, exist_ok=True)
    full = os.path.join(CACHE, f"r{WIDTH}x{HEIGHT}.tif")
    if not os.path.exists(full):
        import numpy as np

        tmp = full + ".part.tif"
        opts = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE"]
        ds = gdal.GetDriverByName("GTiff").Create(tmp, WIDTH, HEIGHT, BANDS, gdal.GDT_UInt16, opts)
        ds.SetGeoTransform((500000, 1, 0, 5300000, 0, -1))
        s = osr.SpatialReference()
        s.ImportFromEPSG(32633)
        ds.SetProjection(s.ExportToWkt())
        rng = np.random.default_rng(0)
        for y in range(0, HEIGHT, 512):  # smooth fields plus noise: compresses like imagery, not like noise
            yy, xx = np.mgrid[y : y + 512, 0:WIDTH].astype(np.float32)
            for b in range(BANDS):
                base = 2000 + 800 * np.sin(xx / (97 + 13 * b)) * np.cos(yy / (131 + 7 * b))
                noise = rng.integers(0, 200, base.shape)
                ds.GetRasterBand(b + 1).WriteArray((base + noise).astype(np.uint16), 0, y)
        ds = None
        os.replace(tmp, full)
    if rows >= HEIGHT:
        return full
    part = os.path.join(CACHE, f"r{WIDTH}x{rows}.tif")
    if not os.path.exists(part):
        opts = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE"]
        gdal.Translate(part + ".part.tif", full, srcWin=[0, 0, WIDTH, rows], creationOptions=opts)
        os.replace(part + ".part.tif", part)
    return part


def gdal_height(path: str) -> int:
    from osgeo import gdal

    return gdal.Open(path).RasterYSize


def _best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def _pair(raster: str, model: str, tmp: str, repeats: int, knobs: tuple[str, str, str] = ("-", "-", "-")) -> dict:
    """segment and the bare model, interleaved `repeats` times; the best of each. Without knobs the bare
    model also runs as one session with every core (lanes 1), and the faster of its two forms is the
    reference: the model's own speed on this machine, however it is run."""
    seg, bare, single = [], [], []
    for i in range(repeats):
        out = os.path.join(tmp, f"seg{i}.tif")
        seg.append(run_child(SEGMENT, raster, model, out, "fixed", *knobs))
        os.remove(out)
        tiles = str(seg[-1]["tiles"])
        bare.append(run_child(BARE, raster, model, tiles, *knobs))
        if knobs == ("-", "-", "-"):
            single.append(run_child(BARE, raster, model, tiles, "-", "-", "1"))
    s, b = _best(seg), _best(bare + single)
    faster = [_best(pair) for pair in zip(bare, single, strict=True)] if single else bare
    rounds = [f["seconds"] / x["seconds"] for f, x in zip(faster, seg, strict=True)]
    r = {"segment": s, "bare": b, "ratio": b["seconds"] / s["seconds"], "tiles": s["tiles"]}
    r["round_median"] = statistics.median(rounds)
    return {**r, "bare_lanes": _best(bare), "bare_single": _best(single)} if single else r


def _naive_pair(raster: str, model: str, tmp: str, repeats: int) -> dict:
    """Default-tiling segment and the naive geoInfer loop, interleaved; the class maps compared."""
    from osgeo import gdal

    seg, naive = [], []
    for i in range(repeats):
        a, b = os.path.join(tmp, f"default{i}.tif"), os.path.join(tmp, f"naive{i}.tif")
        seg.append(run_child(SEGMENT, raster, model, a, "default", "-", "-", "-"))
        n = NAIVE
        naive.append(run_child(GEOINFER, raster, model, b, str(n["chip"]), str(n["stride"]), str(n["crop"])))
    x = gdal.Open(os.path.join(tmp, "default0.tif")).ReadAsArray()
    y = gdal.Open(os.path.join(tmp, "naive0.tif")).ReadAsArray()
    s, nv = _best(seg), _best(naive)
    return {"segment": s, "naive": nv, "ratio": nv["seconds"] / s["seconds"], "equal": float((x == y).mean())}


def run(repeats: int = 2, rows: int | None = None) -> dict:
    """Everything on the whole raster (the thread table on its first rows); with
    `rows` (make bench --quick), everything on that many first rows."""
    t0 = time.perf_counter()
    full, thread_rows = input_raster(rows or HEIGHT), input_raster(rows or THREAD_ROWS)
    made = time.perf_counter() - t0
    from geoseg.core import backends

    lanes, lane_threads = backends.lane_layout()
    result: dict = {"made_s": made, "models": {}, "threads": [], "repeats": repeats}
    result.update(lanes=lanes, lane_threads=lane_threads)
    result["thread_rows"] = gdal_height(thread_rows)
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        models = {
            "light": (os.path.join(tmp, "light.onnx"), conv_macs([BANDS, 8, 8, 8]), full),
            "medium": (os.path.join(tmp, "medium.onnx"), conv_macs([BANDS, 32, 32, 32]), full),
            "heavy": (os.path.join(tmp, "unet.onnx"), unet_macs(), full),
        }
        conv_model(models["light"][0], 8)
        conv_model(models["medium"][0], 32)
        unet_model(models["heavy"][0])
        decode = _best([run_child(DECODE, full) for _ in range(repeats)])["seconds"]
        for name, (model, macs, raster) in models.items():
            r = _pair(raster, model, tmp, repeats + LIGHT_EXTRA * (name == "light"))
            result["models"][name] = {**r, "macs": macs, "rows": gdal_height(raster), "decode": decode}
        medium = models["medium"][0]
        for wanted, spin in ((1, "0"), (1, "1"), (2, "0"), (2, "1")):
            n, threads = backends.lane_layout(wanted)
            r = _pair(thread_rows, medium, tmp, repeats, (spin, str(threads), str(n)))
            result["threads"].append({"spin": spin == "1", "lanes": n, "threads": threads, **r})
        result["naive"] = _naive_pair(full, medium, tmp, repeats)
    result["seconds"] = time.perf_counter() - t0
    return result


def report(r: dict) -> list[str]:
    m = r["models"]
    lines = [
        "## Segment throughput (issue 18)",
        "",
        f"A {WIDTH} × {HEIGHT} 4-band UInt16 DEFLATE GeoTIFF (256² blocks, generated once); chip {CHIP}, stride "
        f"{STRIDE}, crop {CROP}, batch {BATCH}, onnxruntime CPU, class map only; best of {r['repeats']} interleaved "
        f"runs, each a fresh process. Models with random weights; MAC/px counts every convolution per output pixel.",
        "",
        "| model | MAC/px | rows | tiles | segment s | bare model s: one session | bare model s: lanes | "
        "segment / faster bare | run by run: median | decode once s | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = {"light": 0.75, "medium": 0.85, "heavy": 0.95}
    descr = {
        "light": "light: 3 × conv3×3 (8 ch) + 1×1",
        "medium": "medium: 3 × conv3×3 (32 ch) + 1×1",
        "heavy": "heavy: UNet (base 16, 4 levels)",
    }
    for name, x in m.items():
        ok = "met" if x["ratio"] >= targets[name] else "**not met**"
        lines.append(
            f"| {descr[name]} | {x['macs'] / 1000:.1f} k | {x['rows']} | {x['tiles']} | "
            f"{x['segment']['seconds']:.2f} | {x['bare_single']['seconds']:.2f} | {x['bare_lanes']['seconds']:.2f} | "
            f"**{x['ratio']:.2f}** | {x['round_median']:.2f} | "
            f"{x['decode']:.2f} | ≥ {targets[name]} ({ok}) |"
        )
    lines += [
        "",
        "Decode once: every block of the input read once with GDAL in one thread. segment decodes each "
        "block once too (tests/core/test_core_read_once.py), on the reader thread, beside the model. "
        "segment's seconds are its own (SegmentResult.seconds: opening the model, reading, writing, "
        "overviews); onnx and onnxruntime are imported before, as in a QGIS session after its first run. "
        f"The light model has {LIGHT_EXTRA} runs more: it is the cheapest, and the one a busy neighbour on this "
        "shared machine upsets most (its reading and writing slow down more than the model). Run by run: the "
        "median over the runs of the faster bare model in a run against segment in the same run.",
        "",
        "Bare model: the same batches already normalised in memory, run two ways, each the best of its runs: "
        "one onnxruntime session with every core, and the lanes segment uses (core.backends model_lanes: "
        f"{r['lanes']} sessions of {r['lane_threads']} thread(s), each taking the next batch when free). "
        "The ratio is taken against the faster of the two.",
        "",
        f"### onnxruntime threads and lanes (medium model, first {r['thread_rows']} rows, {os.cpu_count()} cores)",
        "",
        "| lanes × intra-op threads | spinning | segment s | bare model s (same settings) | segment / bare |",
        "|---|---|---|---|---|",
    ]
    for t in r["threads"]:
        lines.append(
            f"| {t['lanes']} × {t['threads']} | {'on' if t['spin'] else 'off'} | {t['segment']['seconds']:.2f} | "
            f"{t['bare']['seconds']:.2f} | {t['ratio']:.2f} |"
        )
    n = r["naive"]
    s = n["segment"]
    lines += [
        "",
        "### Default tiling against a naive geoInfer loop (medium model, whole raster)",
        "",
        "| run | chip | stride | crop | batch | tiles | seconds |",
        "|---|---|---|---|---|---|---|",
        f"| segment, default tiling | {s['chip']} | {s['stride']} | {s['crop']} | {s['batch']} | {s['tiles']} | "
        f"{s['seconds']:.1f} |",
        f"| naive geoInfer loop (onnxruntime, each tile read on its own) | {NAIVE['chip']} | {NAIVE['stride']} | "
        f"{NAIVE['crop']} | 1 | {n['naive']['tiles']} | {n['naive']['seconds']:.1f} |",
        "",
        f"- default-tiling segment / naive: **{n['ratio']:.2f}×** faster (target ≥ 3)",
        f"- class maps equal on {100 * n['equal']:.4f} % of pixels (receptive radius 3 ≤ both crops: identical "
        "expected)",
        f"- this benchmark: {r['seconds'] / 60:.1f} min",
        "",
    ]
    return lines


if __name__ == "__main__":
    import json
    import sys

    res = run(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(json.dumps(res, indent=1, default=str), file=sys.stderr)
    print("\n".join(report(res)))
