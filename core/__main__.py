"""Command line over the engine, the third front-end beside the dialogs and Processing:
`python -m geoseg.core exportchips|train|segment|assess|exportonnx|cluster …` builds the same parameter
dataclasses the others build; its options come from their schema (core.params, core.cli)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from .cli import add_arguments, params_from_args
from .cluster import ClusterParams
from .errors import Cancelled, GeoSegError, IsCancelled
from .gdalx import with_gdal_exceptions
from .params import AssessParams, ExportOnnxParams, ExportParams, SegmentParams, TrainParams
from .signals import cancel_on_signals


def _progress(f: float) -> None:
    print(f"\r{100 * f:5.1f}%", end="", file=sys.stderr, flush=True)


def _progress_arg() -> Callable[[float], None]:
    return _progress if sys.stderr.isatty() else lambda f: None


def _run_export(p: ExportParams, cancelled: IsCancelled) -> str:
    from .chips import export_chips

    r = export_chips(p, progress=_progress_arg(), cancelled=cancelled)
    return (
        f"Exported {r.n_chips} of {r.n_grid} grid chips ({r.n_train} train, {r.n_validation} "
        f"validation) to {r.output_dir} in {r.seconds:.1f} s."
    )


def _run_train(p: TrainParams, cancelled: IsCancelled) -> str:
    from .ddp import World
    from .train import train

    r = train(p, progress=_progress_arg(), cancelled=cancelled)
    if World.from_env().rank:  # under torchrun, the summary once (rank 0's), like its log
        return ""
    return (
        f"Best validation mIoU {r.val_miou:.4f} at epoch {r.best_epoch} of {r.epochs_run} on {r.device}; "
        f"wrote {r.model_path}, {r.onnx_path}, {r.metrics_path}."
    )


def _run_segment(p: SegmentParams, cancelled: IsCancelled) -> str:
    from .predict import segment

    r = segment(p, progress=_progress_arg(), cancelled=cancelled)
    return f"Segmented {r.tiles} tiles in {r.seconds:.1f} s with {r.backend} ({r.provider}); wrote {r.output_path}."


def _run_assess(p: AssessParams, cancelled: IsCancelled) -> str:
    from .assess import assess

    r = assess(p, progress=_progress_arg(), cancelled=cancelled)
    return (
        f"Overall accuracy {r.overall_accuracy:.4f}, mean IoU {r.mean_iou:.4f}, macro F1 {r.macro_f1:.4f} "
        f"over {r.pixels} pixels; wrote {r.report_path} and {r.html_path}."
    )


def _run_exportonnx(p: ExportOnnxParams, cancelled: IsCancelled) -> str:
    from .train import export_model_onnx

    return f"Wrote {export_model_onnx(p.model_path, p.output_path, cancelled, p.format)}."


def _run_cluster(p: ClusterParams, cancelled: IsCancelled) -> str:
    from .cluster import run

    return run(p, cancelled)


# command → (dataclass, runner, help)
COMMANDS: dict[str, tuple[type, Callable[[Any, IsCancelled], str], str]] = {
    "exportchips": (ExportParams, _run_export, "export training chips (as geoseg:exportchips)"),
    "train": (TrainParams, _run_train, "train a segmentation model (as geoseg:train)"),
    "segment": (SegmentParams, _run_segment, "tiled prediction of a raster (as geoseg:segment)"),
    "assess": (AssessParams, _run_assess, "accuracy of a class map against reference data (as geoseg:assess)"),
    "exportonnx": (ExportOnnxParams, _run_exportonnx, "GeoSeg .pt checkpoint → ONNX model (as geoseg:exportonnx)"),
    "cluster": (ClusterParams, _run_cluster, "a Dask scheduler and workers on this machine, for SCHEDULER (issue 19)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geoseg.core", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sample", help="write the synthetic sample scene (see `sample --help`)")
    for command, (cls, _, text) in COMMANDS.items():
        add_arguments(sub.add_parser(command, help=text, description=text), cls)
    return parser


@with_gdal_exceptions
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sample"]:
        from .sample import main as sample_main

        return sample_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    cls, run, _ = COMMANDS[args.command]
    # SIGTERM and Ctrl+C cancel the run: it cleans up as on cancel, then exits 128 + the signal
    with cancel_on_signals((signal.SIGTERM, signal.SIGINT)) as cancelled:
        try:
            message = run(params_from_args(cls, args), cancelled)
        except Cancelled as e:
            print(f"error: {cancelled.explain(str(e))}", file=sys.stderr)
            return cancelled.exit_status()
        except GeoSegError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if cancelled.signum is not None:  # it came after the last check: the output is complete
        print(message)
        print(f"error: stopped by {cancelled.name} as the run ended; its output is complete.", file=sys.stderr)
        return cancelled.exit_status()
    if message:
        print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
