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
r = segment(SegmentParams(raster, model, out, chip_size=256, stride_x=248, stride_y=248, crop=4, batch_size=8))
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


def run(sizes: tuple[int, ...] = (4096, 16384)) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        model = os.path.join(tmp, "tiny.onnx")
        tiny_model(model)
        for size in sizes:
            raster = os.path.join(tmp, f"r{size}.tif")
            write_raster(raster, size)
            results[size] = run_child(CHILD, raster, model, os.path.join(tmp, f"c{size}.tif"))
            os.remove(raster)
    return results


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
