"""Segment memory: peak RSS of a fresh process segmenting a 4096² and a 16384² raster.

Prediction streams one strip of tiles at a time, so the peak must not grow with the raster's
height (only a strip's width is held). The model is a tiny 3×3-convolution stack exported to
ONNX with a card, so the figure measures GeoSeg's own buffers, not a network's activations.
"""

from __future__ import annotations

import os
import tempfile

from .common import growth_line, run_child
from .export_memory import write_raster

CHILD = r"""
import json, sys
from geoseg.core.predict import SegmentParams, segment
raster, model, out = sys.argv[1:4]
base = hwm()
size = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0  # > 0: read at this pixel size, write back (issue 17)
grid = dict(resolution="size", pixel_size=size) if size else {}
r = segment(
    SegmentParams(raster, model, out, chip_size=256, stride_x=248, stride_y=248, crop=4, batch_size=8, **grid)
)
print(json.dumps({"tiles": r.tiles, "seconds": r.seconds, "peak_kb": hwm(), "import_kb": base}))
"""


def tiny_model(path: str, bands: int = 4, classes: int = 4) -> None:
    import torch

    from geoseg.core.card import ModelCard
    from geoseg.core.checkpoint import save_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(bands, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, classes, 3, padding=1)
    ).eval()
    card = ModelCard.from_dict(
        {
            "classes": [{"value": i, "name": f"class {i}", "color": "#336699"} for i in range(classes)],
            "bands": list(range(1, bands + 1)),
            "in_channels": bands,
            "chip_size": 256,
            "normalization": {"mean": [2000.0] * bands, "std": [1000.0] * bands},
        }
    )
    save_onnx(path, net, card)


def _each_size(sizes: tuple[int, ...], measure) -> dict:
    """{size: measure(folder, raster, model, size)} over fresh rasters and one tiny model."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        model = os.path.join(tmp, "tiny.onnx")
        tiny_model(model)
        for size in sizes:
            raster = os.path.join(tmp, f"r{size}.tif")
            write_raster(raster, size)
            results[size] = measure(tmp, raster, model, size)
            os.remove(raster)
    return results


def run(sizes: tuple[int, ...] = (4096, 16384)) -> dict:
    return _each_size(sizes, lambda tmp, raster, model, size: run_child(CHILD, raster, model, f"{tmp}/c{size}.tif"))


RESAMPLE_PIXEL = 1.25  # the benchmark raster has 1 m pixels: read at 1.25 m, written back on the 1 m grid


def _plain_and_resampled(tmp: str, raster: str, model: str, size: int) -> dict:
    return {
        "plain": run_child(CHILD, raster, model, f"{tmp}/p{size}.tif"),
        "resampled": run_child(CHILD, raster, model, f"{tmp}/w{size}.tif", str(RESAMPLE_PIXEL)),
    }


def run_resampled(sizes: tuple[int, ...] = (4096, 16384)) -> dict:
    """Issue 17: each size segmented plainly and through a warped VRT at RESAMPLE_PIXEL (bilinear),
    the class map warped back nearest-neighbour onto the raster's grid; fresh processes each."""
    return _each_size(sizes, _plain_and_resampled)


def report(results: dict) -> list[str]:
    lines = [
        "## Segment memory",
        "",
        "Peak RSS of a fresh process segmenting a 4-band UInt16 raster with a tiny ONNX model (chip 256, "
        "stride 248, crop 4, batch 8, onnxruntime CPU), class map only.",
        "",
        "| raster | tiles | seconds | peak RSS | RSS at start |",
        "|---|---|---|---|---|",
    ]
    for size, r in results.items():
        lines.append(
            f"| {size}² | {r['tiles']} | {r['seconds']:.1f} | {r['peak_kb'] / 1024:.0f} MB | "
            f"{r['import_kb'] / 1024:.0f} MB |"
        )
    return [*lines, "", growth_line(results, ", 4× the strip width"), ""]


def report_resampled(results: dict) -> list[str]:
    lines = [
        "## Segment memory and cost with resampling (RESOLUTION 2)",
        "",
        f"As above, but read through a GDAL warped VRT at {RESAMPLE_PIXEL:g} m (the raster has 1 m pixels; bilinear) "
        "and written back nearest-neighbour on the 1 m grid (OUTPUT_GRID 0), against a plain run of the same "
        "raster in the same benchmark.",
        "",
        "| raster | tiles | seconds | peak RSS | plain: seconds | plain: peak RSS | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, r in results.items():
        w, p = r["resampled"], r["plain"]
        lines.append(
            f"| {size}² | {w['tiles']} | {w['seconds']:.1f} | {w['peak_kb'] / 1024:.0f} MB | {p['seconds']:.1f} | "
            f"{p['peak_kb'] / 1024:.0f} MB | {w['seconds'] / p['seconds']:.2f} |"
        )
    growth = {size: r["resampled"] for size, r in results.items()}
    return [*lines, "", growth_line(growth, ", 4× the strip width"), ""]
