"""Run the benchmarks and write BENCHMARKS.md (machine, date, figures, targets).

`python -m benchmarks` is `make bench` (about 25 minutes on 2 cores); `--quick` runs every
measurement at small sizes in about a minute and prints the report without writing the file
(the ratios are then indicative only: fixed start-up costs weigh more on small rasters).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

from . import (
    dask_scale,
    ddp_scale,
    export_memory,
    export_speed,
    loader_speed,
    pretrain_compare,
    regions_cost,
    segment_memory,
    segment_speed,
    segment_throughput,
    train_speed,
)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FULL = {
    "export_memory": (2048, 8192),
    "export_speed": 8192,
    "segment_memory": (4096, 16384),
    "segment_speed": 4096,
    "regions": (1024, 4096),  # TTA raster, class map for SIEVE and polygonize
    "train": {"size": 2048, "epochs": 3, "steps": 3},
    "loader": {"chips": 2000, "batches": 100, "file_batches": 25, "augment": 20, "steps": 3},
    "pretrain": {"size": 256, "epochs": 6, "pretrain_epochs": 10},  # about 1 min on 2 cores
    "dask": 4096,  # in-process, 1 and 2 workers (issue 19)
    "ddp": {"size": 512, "epochs": 3},  # 1 and 2 training processes (torchrun, issue 19)
}
QUICK = {
    "export_memory": (512, 1024),
    "export_speed": 1024,
    "segment_memory": (512, 1024),
    "segment_speed": 768,
    "regions": (512, 1024),
    "train": {"size": 768, "epochs": 1, "steps": 1},
    "loader": {"chips": 200, "batches": 10, "file_batches": 5, "augment": 3, "steps": 1},
    "pretrain": {"size": 128, "epochs": 1, "pretrain_epochs": 1},
    "dask": 1024,
    "ddp": {"size": 512, "epochs": 2},
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def targets(seg: dict, mem: dict, exp: dict, train: dict, tp: dict, loader: dict) -> list[str]:
    """The issue's done-when targets, each with the figure measured in this run."""
    s, b = seg["segment"], seg["bare"]
    to_bare = (s["tiles"] / s["seconds"]) / (b["tiles"] / b["seconds"])
    sizes = sorted(mem)
    growth = (mem[sizes[-1]]["peak_kb"] - mem[sizes[0]]["peak_kb"]) / 1024
    e, g = exp["export"], exp["bare"]
    to_gdal = (e["chips"] / e["seconds"]) / (g["chips"] / g["seconds"])
    lo, st = train["loader"], train["step"]
    feed = (lo["samples"] / lo["seconds"]) / (st["samples"] / st["seconds"])
    rows = [
        ("segment end to end / bare model throughput", f"{to_bare:.2f}", "≥ 0.85", to_bare >= 0.85),
        (f"segment peak RSS growth {sizes[0]}² → {sizes[-1]}²", f"{growth:+.0f} MB", "≤ 300 MB", growth <= 300),
        ("chip export / bare GDAL read + write", f"{to_gdal:.2f}", "≥ 0.8", to_gdal >= 0.8),
        ("loader (with augmentation) / training step", f"{feed:.0f}×", "≥ 3", feed >= 3),
    ]
    goals = {"light": 0.75, "medium": 0.85, "heavy": 0.95}  # issue 18: segment / bare model, same tiles
    for name, goal in goals.items():
        m = tp["models"][name]
        rows.append(
            (
                f"segment / bare model, {name} ({m['macs'] / 1000:.1f} k MAC/px)",
                f"{m['ratio']:.2f}",
                f"≥ {goal}",
                m["ratio"] >= goal,
            )
        )
    nv = tp["naive"]
    rows.append(
        (
            "default-tiling segment / naive geoInfer (chip 256, stride 128, crop 50, batch 1)",
            f"{nv['ratio']:.2f}× (maps equal on {100 * nv['equal']:.4f} %)",
            "≥ 3",
            nv["ratio"] >= 3,
        )
    )
    packed = loader["packed"][0]
    rate = packed["samples"] / packed["seconds"]
    rows.append(("training loader, 256² 4-band chips as batches", f"{rate:.0f} samples/s", "≥ 1500", rate >= 1500))
    return [
        "## Targets",
        "",
        "| measure | this run | target | met |",
        "|---|---|---|---|",
        *[f"| {a} | {v} | {t} | {'yes' if ok else '**no**'} |" for a, v, t, ok in rows],
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes; print the report, do not write BENCHMARKS.md")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()

    def step(name: str, fn, *a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        return r

    exp_mem = step("export memory", export_memory.run, sizes["export_memory"])
    exp = step("export speed", export_speed.run, sizes["export_speed"])
    seg_mem = step("segment memory", segment_memory.run, sizes["segment_memory"])
    seg_warp = step("segment memory, resampled", segment_memory.run_resampled, sizes["segment_memory"])
    seg = step("segment speed", segment_speed.run, sizes["segment_speed"])
    throughput = step("segment throughput (issue 18)", segment_throughput.run, *((1, 512) if args.quick else (2,)))
    regions = step("TTA, SIEVE and polygons", regions_cost.run, *sizes["regions"])
    train = step("training input", train_speed.run, **sizes["train"])
    loader = step("training loader", loader_speed.run, **sizes["loader"])
    init = step("initialisation comparison", pretrain_compare.run, **sizes["pretrain"])
    dask = step("segment on a Dask cluster", dask_scale.run, sizes["dask"])
    ddp = step("training in several processes", ddp_scale.run, **sizes["ddp"])
    minutes = (time.perf_counter() - t0) / 60
    lines = [
        "# GeoSeg benchmarks",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}",
        f"- command: `make bench` ({minutes:.1f} min" f"{', --quick sizes' if args.quick else ''})",
        "- every figure comes from a fresh child process; ratios compare runs made within this one "
        "benchmark, on this machine",
        "",
    ]
    lines += targets(seg, seg_mem, exp, train, throughput, loader)
    lines += segment_speed.report(seg)
    lines += segment_throughput.report(throughput)
    lines += segment_memory.report(seg_mem)
    lines += segment_memory.report_resampled(seg_warp)
    lines += regions_cost.report(regions)
    lines += export_speed.report(exp)
    lines += export_memory.report(exp_mem)
    lines += train_speed.report(train)
    lines += loader_speed.report(loader)
    lines += pretrain_compare.report(init)
    lines += dask_scale.report(dask)
    lines += ddp_scale.report(ddp)
    text = "\n".join(lines)
    if not args.quick:
        with open(os.path.join(HERE, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
