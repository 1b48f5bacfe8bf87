"""Training in 1 process against 2 torchrun processes (DDP over gloo, on the CPU), same chips and the
same global batch, measured in one run: the step time of each (the epochs after the first, from the
metrics CSV) and the whole command's wall time (torch start-up in every process included).

On a 2-vCPU machine the two processes share the cores that one process's two threads use (torchrun
gives each process one thread), so the speed-up is capped near 1×: the figure shows the overhead
of the gradient all-reduce and of the processes, not the gain on real GPUs (one per process).

`python -m benchmarks.ddp_scale [size]` runs it on its own.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time

from .export_memory import write_labels, write_raster

CHIP, BATCH = 64, 8
OPTIONS = '{"base_width": 8, "depth": 3}'


def _train(chips: str, out: str, epochs: int, processes: int, threads: int | None = None) -> dict:
    """One `train` command; `threads`: OMP_NUM_THREADS of its process(es) (torchrun sets 1 by default)."""
    args = [
        "train",
        "--chips",
        chips,
        "--output-model",
        out,
        "--epochs",
        str(epochs),
        "--batch-size",
        str(BATCH),
        "--device",
        "cpu",
        "--loss",
        "ce",
        "--model-options",
        OPTIONS,
    ]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}"]
    cmd = [sys.executable, *(launcher if processes > 1 else []), "-m", "geoseg.core", *args]
    t0 = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    with open(out[:-3] + ".metrics.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return {"wall": wall, "epoch_seconds": seconds}


def run(size: int = 512, epochs: int = 3) -> dict:
    from geoseg.core.chips import ExportParams, export_chips

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        raster, labels, chips = (os.path.join(tmp, n) for n in ("r.tif", "l.gpkg", "chips"))
        write_raster(raster, size)
        write_labels(labels, size)
        exported = export_chips(ExportParams(raster, labels, chips, class_field="cls", chip_size=CHIP))
        one = _train(chips, os.path.join(tmp, "one", "m.pt"), epochs, 1)
        one_1 = _train(chips, os.path.join(tmp, "one_1", "m.pt"), epochs, 1, threads=1)
        two = _train(chips, os.path.join(tmp, "two", "m.pt"), epochs, 2)
    steps = exported.n_train // BATCH
    return {"chips": exported.n_train, "steps": steps, "epochs": epochs, "one": one, "one_1": one_1, "two": two}


def report(r: dict) -> list[str]:
    def step_ms(x: dict) -> float:
        later = x["epoch_seconds"][1:] or x["epoch_seconds"]
        return 1000 * sum(later) / len(later) / max(r["steps"], 1)

    one, one_1, two = step_ms(r["one"]), step_ms(r["one_1"]), step_ms(r["two"])
    return [
        "## Training in several processes (torchrun, DDP)",
        "",
        f"{r['chips']} training chips of {CHIP} px, global batch {BATCH}, UNet {OPTIONS}, cross-entropy, "
        f"{r['epochs']} epochs on the CPU; 2 processes: gloo, {BATCH // 2} chips each per step.",
        "",
        "| processes × threads | ms per step (epochs 2+, with validation) | wall time of the command (s) |",
        "|---|---|---|",
        f"| 1 × torch's default | {one:.0f} | {r['one']['wall']:.1f} |",
        f"| 1 × 1 | {one_1:.0f} | {r['one_1']['wall']:.1f} |",
        f"| 2 × 1 (torchrun) | {two:.0f} | {r['two']['wall']:.1f} |",
        "",
        f"- step time, 1 process × 1 thread / 2 processes: **{one_1 / two:.2f}×**; 1 process with torch's default "
        f"threads / 2 processes: {one / two:.2f}× (on 2 shared vCPUs the speed-up is capped near 2× at best and "
        "depends on what else runs: the processes share the cores one process's threads use; on GPUs each "
        "process has a device of its own)",
        "",
    ]


if __name__ == "__main__":
    print("\n".join(report(run(*(int(a) for a in sys.argv[1:2])))))
