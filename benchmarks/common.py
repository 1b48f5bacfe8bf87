"""What the benchmarks share: a fresh child process per measurement, and its peak memory."""

from __future__ import annotations

import json
import subprocess
import sys

# VmHWM, not ru_maxrss: the latter is inherited from the parent across fork/exec.
HWM = """
def hwm():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


# The bare model's timing loop, the tail of a child script that has set `engine`, `batches` (two
# normalised batches), `batch` and `tiles`, and optionally `lanes` (copies of the model, core.backends
# model_lanes): the run's tiles through the model, the batches cycled; with lanes, each lane in its own
# thread takes the next batch when it is free, as segment runs them.
BARE_LOOP = r"""
import queue, threading
lanes = globals().get("lanes") or [engine]
for e in lanes:
    e(batches[0])  # warm-up, as segment's own probe run
sizes = queue.SimpleQueue()
for i, start in enumerate(range(0, tiles, batch)):
    sizes.put((i % 2, min(batch, tiles - start)))
def lane(e):
    while True:
        try:
            k, n = sizes.get_nowait()
        except queue.Empty:
            return
        e(batches[k][:n])
t0 = time.perf_counter()
threads = [threading.Thread(target=lane, args=(e,)) for e in lanes]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"tiles": tiles, "seconds": time.perf_counter() - t0, "lanes": len(lanes)}))
"""


# The tail of a naive geoInfer child (inside its tile loop, `cls` the tile's classes): keep each tile's
# centre (its whole extent at the raster's edges), then write the map and print the timing.
NAIVE_TAIL = r"""
        y0, y1 = (0 if y == 0 else crop), (chip if y + chip == height else chip - crop)
        x0, x1 = (0 if x == 0 else crop), (chip if x + chip == width else chip - crop)
        result[y + y0:y + y1, x + x0:x + x1] = cls[y0:y1, x0:x1]
        tiles += 1
dst = gdal.GetDriverByName("GTiff").Create(out, width, height, 1, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE"])
dst.SetGeoTransform(src.GetGeoTransform())
dst.SetProjection(src.GetProjection())
dst.GetRasterBand(1).WriteArray(result)
dst = None
print(json.dumps({"tiles": tiles, "seconds": time.perf_counter() - t0, "peak_kb": hwm()}))
"""


def log_records(prefix: str) -> str:
    """Child-script code that keeps, in `records`, the arguments of geoseg's log messages starting with `prefix`."""
    return f"""
import logging
records = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.msg.startswith({prefix!r}):
            records.append(record.args)
log = logging.getLogger("geoseg")
log.setLevel(logging.INFO)
log.addHandler(Keep())
"""


def run_child(code: str, *args: str, env: dict | None = None) -> dict:
    """Run `code` (which prints one JSON line last) in a fresh Python; return that JSON."""
    out = subprocess.run(
        [sys.executable, "-c", HWM + code, *args], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth_line(results: dict, note: str = "") -> str:
    sizes = sorted(results)
    growth = (results[sizes[-1]]["peak_kb"] - results[sizes[0]]["peak_kb"]) / 1024
    return (
        f"Peak RSS growth from {sizes[0]}² to {sizes[-1]}² ({(sizes[-1] / sizes[0]) ** 2:.0f}× the pixels"
        f"{note}): {growth:+.0f} MB."
    )
