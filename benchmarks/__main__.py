"""Run the benchmarks and write BENCHMARKS.md (machine, date, figures)."""

from __future__ import annotations

import datetime
import os
import platform

from . import export_memory, segment_memory

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main() -> None:
    lines = ["# GeoSeg benchmarks", "", f"- date: {datetime.date.today().isoformat()}",
             f"- machine: {machine()}", "- command: `make bench`", ""]
    lines += export_memory.report(export_memory.run())
    lines += segment_memory.report(segment_memory.run())
    text = "\n".join(lines)
    with open(os.path.join(HERE, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
