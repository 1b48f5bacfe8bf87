"""Command line over the engine, the third front-end beside the dialogs and Processing:
`python -m geoseg.core exportchips …` builds the same ExportParams the others build."""

from __future__ import annotations

import argparse
import logging
import sys

from .chips import MODES, ExportParams, export_chips
from .errors import GeoSegError
from .split import SPLIT_METHODS


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exportchips", help="export training chips (as geoseg:exportchips)")
    p.add_argument("--input", required=True, help="raster file")
    p.add_argument("--labels", required=True, help="polygon file (optionally 'file.gpkg|layername=x')")
    p.add_argument("--output-dir", required=True, help="new or empty folder")
    p.add_argument("--class-field", help="integer class field (default: every polygon is class 1)")
    p.add_argument("--name-field", help="class name field")
    p.add_argument("--chip-size", type=int, default=256)
    p.add_argument("--stride-x", type=int)
    p.add_argument("--stride-y", type=int)
    p.add_argument("--mode", choices=MODES, default="all")
    p.add_argument("--background", type=int, default=0)
    p.add_argument("--max-nodata-fraction", type=float, default=1.0)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--split-method", choices=SPLIT_METHODS, default="random")
    p.add_argument("--block-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index", help="write chip footprints to this GeoPackage")


def _progress(f: float) -> None:
    print(f"\r{100 * f:5.1f}%", end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sample"]:
        from .sample import main as sample_main

        return sample_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m geoseg.core", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sample", help="write the synthetic sample scene (see `sample --help`)")
    _export_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        r = export_chips(ExportParams(
            input_path=args.input, labels_path=args.labels, output_dir=args.output_dir,
            class_field=args.class_field, name_field=args.name_field, chip_size=args.chip_size,
            stride_x=args.stride_x, stride_y=args.stride_y, mode=args.mode, background=args.background,
            max_nodata_fraction=args.max_nodata_fraction, validation_fraction=args.validation_fraction,
            split_method=args.split_method, block_size=args.block_size, seed=args.seed,
            index_path=args.index), progress=_progress if sys.stderr.isatty() else lambda f: None)
    except GeoSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Exported {r.n_chips} of {r.n_grid} grid chips ({r.n_train} train, {r.n_validation} "
          f"validation) to {r.output_dir} in {r.seconds:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
