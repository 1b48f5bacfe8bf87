"""Command line over the engine, the third front-end beside the dialogs and Processing:
`python -m geoseg.core exportchips|train|segment …` builds the same parameter dataclasses the others build."""

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


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from .options import ARCHITECTURES, CLASS_WEIGHTS, DEVICES, LOSSES, SCHEDULES

    p = sub.add_parser("train", help="train a segmentation model (as geoseg:train)")
    p.add_argument("--chips", required=True, help="folder written by exportchips")
    p.add_argument("--output-model", required=True, help="new .pt file; the .onnx is written beside it")
    p.add_argument("--architecture", choices=ARCHITECTURES, default="unet")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--loss", choices=LOSSES, default="dice_ce")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="none")
    p.add_argument("--ignore-background", action="store_true")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--memory-budget-mb", type=float, default=0.0,
                   help="halve the batch when a training step would need more (0: $GEOSEG_MEMORY_BUDGET_MB or none)")
    p.add_argument("--model-options", default="{}", help='JSON, e.g. {"base_width": 16}')


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    from .options import BACKENDS, DEVICES

    p = sub.add_parser("segment", help="tiled prediction of a raster (as geoseg:segment)")
    p.add_argument("--input", required=True, help="raster file")
    p.add_argument("--model", required=True, help=".onnx with a GeoSeg card, or a GeoSeg .pt")
    p.add_argument("--output", required=True, help="new class map (.tif)")
    p.add_argument("--probabilities", help="new probability raster (.tif)")
    p.add_argument("--chip-size", type=int)
    p.add_argument("--stride-x", type=int)
    p.add_argument("--stride-y", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--device", choices=DEVICES, default="auto")


def _run_segment(args: argparse.Namespace) -> str:
    from .predict import SegmentParams, segment

    r = segment(SegmentParams(
        input_path=args.input, model_path=args.model, output_path=args.output, probabilities_path=args.probabilities,
        chip_size=args.chip_size, stride_x=args.stride_x, stride_y=args.stride_y, crop=args.crop,
        batch_size=args.batch_size, backend=args.backend, device=args.device),
        progress=_progress if sys.stderr.isatty() else lambda f: None)
    return f"Segmented {r.tiles} tiles in {r.seconds:.1f} s with {r.backend} ({r.provider}); wrote {r.output_path}."


def _run_train(args: argparse.Namespace) -> str:
    import json

    from .train import TrainParams, train

    r = train(TrainParams(
        chips_dir=args.chips, output_model=args.output_model, architecture=args.architecture, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, loss=args.loss,
        class_weights=args.class_weights, ignore_background=args.ignore_background, device=args.device,
        seed=args.seed, schedule=args.schedule, patience=args.patience, augment=not args.no_augment,
        resume=args.resume, model_options=json.loads(args.model_options), memory_budget_mb=args.memory_budget_mb),
        progress=_progress if sys.stderr.isatty() else lambda f: None)
    return (f"Best validation mIoU {r.val_miou:.4f} at epoch {r.best_epoch} of {r.epochs_run} on {r.device}; "
            f"wrote {r.model_path}, {r.onnx_path}, {r.metrics_path}.")


def _run_export(args: argparse.Namespace) -> str:
    r = export_chips(ExportParams(
        input_path=args.input, labels_path=args.labels, output_dir=args.output_dir,
        class_field=args.class_field, name_field=args.name_field, chip_size=args.chip_size,
        stride_x=args.stride_x, stride_y=args.stride_y, mode=args.mode, background=args.background,
        max_nodata_fraction=args.max_nodata_fraction, validation_fraction=args.validation_fraction,
        split_method=args.split_method, block_size=args.block_size, seed=args.seed,
        index_path=args.index), progress=_progress if sys.stderr.isatty() else lambda f: None)
    return (f"Exported {r.n_chips} of {r.n_grid} grid chips ({r.n_train} train, {r.n_validation} "
            f"validation) to {r.output_dir} in {r.seconds:.1f} s.")


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
    _train_parser(sub)
    _segment_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        run = {"exportchips": _run_export, "train": _run_train, "segment": _run_segment}[args.command]
        message = run(args)
    except GeoSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
