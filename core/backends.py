"""Inference backends for segmentation: onnxruntime for `.onnx`, torch for GeoSeg `.pt`.

Both take a float32 batch `[N, C, H, W]` (already normalised) and return float32 scores
`[N, K, H, W]`: logits, or probabilities for a model that outputs them (`ModelIO.probabilities`;
a single sigmoid channel p arrives as the two classes 1 − p and p). The model's card is read and
validated before a backend is built (core.foreign for models without a GeoSeg card), and the
backend is tried on a blank tile before any pixel of the user's raster is read.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np

from .card import ModelCard
from .checkpoint import load_checkpoint, model_from_checkpoint
from .device import resolve_device
from .errors import GeoSegError, first_line, one_line
from .foreign import ModelIO, OpenedModel, read_onnx_model
from .gdalx import with_gdal_exceptions
from .memory import leaf_output_bytes
from .options import BACKENDS, DEVICES

log = logging.getLogger("geoseg")

PROBE_SIZE = 64  # pixels: activation memory is measured on a tile this size and scaled by area
FALLBACK_BYTES_PER_PIXEL = 1024.0  # when a model cannot be probed: 256 float32 activations per pixel
# onnxruntime's CPU threads, chosen by measurement (benchmarks/segment_throughput.py, BENCHMARKS.md): the
# cores shared among CPU_LANES copies of the model that run whole batches side by side (0 threads: the cores
# divided among them), and idle workers that sleep rather than spin.
INTRA_OP_THREADS = 0
INTRA_OP_SPINNING = False
CPU_LANES = 2


class Backend(Protocol):
    name: str
    provider: str
    on_cuda: bool

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def activation_bytes_per_pixel(self, channels: int) -> float: ...


@with_gdal_exceptions
def read_model(model_path: str, card_path: str | None = None, output: int = 0, what: str = "MODEL") -> OpenedModel:
    """The validated card of an `.onnx` or `.pt` model and how to run it, without running it: a GeoSeg
    card, a card derived from Deepness metadata, or the user's CARD file (core.foreign)."""
    if not model_path:
        raise GeoSegError(f"{what}: no model file given.")
    if os.path.isdir(model_path):
        raise GeoSegError(f"{what}: {model_path} is a folder; give a .onnx or .pt model file.", param=what)
    if not os.path.isfile(model_path):
        raise GeoSegError(f"{what}: file not found: {model_path}")
    ext = os.path.splitext(model_path)[1].lower()
    if ext == ".pt":
        if card_path:
            raise GeoSegError("CARD: a GeoSeg .pt carries its own card; CARD is for .onnx models.", param="CARD")
        if output:
            raise GeoSegError(f"OUTPUT_INDEX {output}: a GeoSeg .pt has one output (0).", param="OUTPUT_INDEX")
        card = load_checkpoint(model_path, what)["card"]
        return OpenedModel(card, provenance={k: "from the GeoSeg card" for k in card.to_dict()})
    if ext != ".onnx":
        raise GeoSegError(f"{what}: {model_path} is neither an .onnx nor a GeoSeg .pt model.")
    return read_onnx_model(model_path, card_path, output, what)


def read_model_card(model_path: str, what: str = "MODEL", card_path: str | None = None) -> ModelCard:
    """The validated card of an `.onnx` or `.pt` model, without running it (see `read_model`)."""
    return read_model(model_path, card_path, 0, what).card


class OnnxBackend:
    """onnxruntime session; the CUDA execution provider when asked for (or auto) and working.

    Session options are set on purpose: all graph optimisations (fusions, NCHWc layouts), one
    operator at a time (sequential, inter-op 1) with `threads` (default: every core) inside each
    operator, no spinning of idle worker threads (GeoSeg's reader and writer threads need those
    cores between runs), and on CUDA I/O binding so the batch goes to the device once and logits
    come back once. On the CPU, segment runs several with a share of the cores each: model_lanes.
    """

    name = "onnxruntime"

    def __init__(self, path: str, device: str, io: ModelIO | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        self.io = io or ModelIO()
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise GeoSegError(
                "DEVICE: CUDA was requested, but this onnxruntime has no CUDA execution provider "
                f"(available: {', '.join(available)}). Install onnxruntime-gpu, or choose auto/cpu."
            )
        if want_cuda and hasattr(ort, "preload_dlls"):
            try:  # use the CUDA/cuDNN libraries of an installed torch when the system has none
                ort.preload_dlls()
            except Exception as e:  # noqa: BLE001
                log.info("onnxruntime could not preload CUDA libraries (%s)", e)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or INTRA_OP_THREADS or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if INTRA_OP_SPINNING else "0")
        opts.log_severity_level = 3
        self.path = path
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise GeoSegError(f"MODEL: onnxruntime cannot load {path} ({first_line(e)}).") from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise GeoSegError(
                "DEVICE: CUDA was requested, but onnxruntime's CUDA provider failed to start "
                "(missing CUDA/cuDNN libraries?); choose auto or cpu."
            )
        self.on_cuda = self.provider == "CUDAExecutionProvider"
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[self.io.output].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Scores for `batch`; a graph with a fixed batch size gets its batches in pieces of that size
        (the last one padded)."""
        fixed = self.io.fixed_batch
        if not fixed or len(batch) == fixed:
            return self._scores(self._run(batch))
        parts = []
        for i in range(0, len(batch), fixed):
            piece = batch[i : i + fixed]
            n = len(piece)
            if n < fixed:
                piece = np.concatenate([piece, np.zeros((fixed - n, *piece.shape[1:]), piece.dtype)])
            parts.append(self._run(piece)[:n])
        return self._scores(np.concatenate(parts))

    def _scores(self, out: np.ndarray) -> np.ndarray:
        """A single channel p (or its logit) as the two classes [1 − p, p]; anything else as it is."""
        if not self.io.single:
            return out
        p = out if out.ndim == 3 else out[:, 0]
        if self.io.activation != "sigmoid":
            p = 1.0 / (1.0 + np.exp(-p))
        return np.stack([1.0 - p, p], axis=1).astype(np.float32, copy=False)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if not self.on_cuda:
            return self.session.run([self.output], {self.input: batch})[0]
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        binding.bind_output(self.output, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def activation_bytes_per_pixel(self, channels: int) -> float:
        """Sum of every intermediate tensor of the unoptimised graph on a small probe tile, per pixel:
        an upper bound (onnxruntime reuses buffers) that needs no model-specific knowledge."""
        import onnx
        import onnxruntime as ort

        try:
            model = onnx.load(self.path)
            named = {o.name for o in model.graph.output}
            for node in model.graph.node:
                for name in node.output:
                    if name and name not in named:
                        model.graph.output.append(onnx.ValueInfoProto(name=name))
                        named.add(name)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.log_severity_level = 3
            probe = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            size, batch = self.io.fixed_size or PROBE_SIZE, self.io.fixed_batch or 1
            outs = probe.run(None, {self.input: np.zeros((batch, channels, size, size), np.float32)})
        except Exception as e:  # noqa: BLE001  (models with a fixed input size, unusual graphs)
            log.info(
                "Could not measure the model's activation memory (%s); assuming %.0f bytes per pixel.",
                first_line(e),
                FALLBACK_BYTES_PER_PIXEL,
            )
            return FALLBACK_BYTES_PER_PIXEL
        return sum(o.nbytes for o in outs if isinstance(o, np.ndarray)) / (batch * size**2)


class TorchBackend:
    """A GeoSeg `.pt` rebuilt from its card; inference_mode, AMP and channels_last on CUDA."""

    name = "torch"

    def __init__(self, path: str, device: str) -> None:
        import torch

        self.device = resolve_device(device)
        self.model = model_from_checkpoint(load_checkpoint(path)).to(self.device).eval()
        self.provider = f"torch {torch.__version__} on {self.device}"
        self.on_cuda = self.device == "cuda"
        self.amp = None
        if self.device == "cuda":
            self.model.to(memory_format=torch.channels_last)
            # bfloat16 where the GPU has it (same range as float32), else float16
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            torch.backends.cudnn.benchmark = True  # every batch has the same tile size: tune once
            self.provider += f" ({torch.cuda.get_device_name()}, {str(self.amp).replace('torch.', '')} autocast)"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.device == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=self.amp):
                    out = self.model(x)
            else:
                out = self.model(x)
            return out.float().cpu().numpy()

    def activation_bytes_per_pixel(self, channels: int) -> float:
        """Sum of every module's output on a small probe tile, per pixel (an upper bound)."""
        probe = np.zeros((1, channels, PROBE_SIZE, PROBE_SIZE), np.float32)
        return leaf_output_bytes(self.model, lambda: self(probe)) / PROBE_SIZE**2


def _probe_error(engine: Backend, card: ModelCard, chip: int, e: Exception) -> GeoSegError:
    """The message for a model that fails on a blank tile: CHIP_SIZE's fault when the model works at
    its card's own chip size (a model exported for one fixed size), else the model's."""
    n = card.in_channels
    if chip != card.chip_size:
        try:
            engine(np.zeros((1, n, card.chip_size, card.chip_size), dtype=np.float32))
        except Exception:  # noqa: BLE001  (fails at its own size too: the model's fault)
            pass
        else:
            return GeoSegError(
                f"CHIP_SIZE {chip}: the model accepts only tiles of its card's chip size {card.chip_size}, not "
                f"{chip} × {chip} ({one_line(e)}); leave CHIP_SIZE empty or set it to {card.chip_size}.",
                param="CHIP_SIZE",
            )
    return GeoSegError(
        f"MODEL: the model fails on a [1, {n}, {chip}, {chip}] input as its card describes ({one_line(e)}).",
        param="MODEL",
    )


def model_lanes(engine: Backend, batch_bytes: float = 0.0, budget_mb: float = 0.0) -> list[Backend]:
    """Copies of an onnxruntime CPU model that run whole batches side by side, the cores divided among
    them. Measured on 2 cores (issue 18): two one-thread sessions ran the benchmark models 8-12 % faster
    than one two-thread session, whose threads meet at the end of every operator; and a reader or writer
    thread that takes a core for a moment delays one copy, not both. One lane (the engine itself) for
    torch (its threads are process-wide), CUDA, a single core, CPU_LANES 1, or a memory budget (MB,
    0: none) that does not hold a batch of `batch_bytes` in each lane."""
    lanes, threads = lane_layout()
    fits = budget_mb <= 0 or lanes * batch_bytes <= budget_mb * 1e6
    if not isinstance(engine, OnnxBackend) or engine.on_cuda or lanes < 2 or not fits:
        return [engine]
    return [OnnxBackend(engine.path, "cpu", engine.io, threads) for _ in range(lanes)]


def lane_layout(lanes: int = 0) -> tuple[int, int]:
    """(lanes, onnxruntime intra-op threads in each) on this machine for `lanes` wanted (0: CPU_LANES):
    at most one lane per core, the cores divided among them unless INTRA_OP_THREADS says otherwise."""
    cores = os.cpu_count() or 1
    n = max(1, min(lanes or CPU_LANES, cores))
    return n, INTRA_OP_THREADS or max(1, cores // n)


def open_backend(
    model_path: str, card: ModelCard, backend: str, device: str, chip: int, io: ModelIO | None = None
) -> Backend:
    """Build the backend and prove it on a blank tile of the run's size: the output must match the card.
    `io` (from `read_model`) says how to run an ONNX graph as it is."""
    if backend not in BACKENDS:
        raise GeoSegError(f"BACKEND must be one of {', '.join(BACKENDS)} (got '{backend}').")
    if device not in DEVICES:
        raise GeoSegError(f"DEVICE must be one of {', '.join(DEVICES)} (got '{device}').")
    is_onnx = model_path.lower().endswith(".onnx")
    if backend == "auto":
        backend = "onnxruntime" if is_onnx else "torch"
    if backend == "torch" and is_onnx:
        raise GeoSegError("BACKEND torch needs a GeoSeg .pt model; use onnxruntime (or auto) for an .onnx file.")
    if backend == "onnxruntime" and not is_onnx:
        raise GeoSegError(
            "BACKEND onnxruntime needs an .onnx model; export the .pt with geoseg:exportonnx, "
            "or use the torch backend (or auto)."
        )
    engine: Backend = (
        OnnxBackend(model_path, device, io) if backend == "onnxruntime" else TorchBackend(model_path, device)
    )
    n, k = card.in_channels, card.num_classes
    try:
        out = engine(np.zeros((1, n, chip, chip), dtype=np.float32))
    except GeoSegError:
        raise
    except Exception as e:  # noqa: BLE001  (whatever the model raises for the card's input)
        raise _probe_error(engine, card, chip, e) from None
    if tuple(out.shape) != (1, k, chip, chip):
        raise GeoSegError(
            f"MODEL: the model returns shape {list(out.shape)} for a [1, {n}, {chip}, {chip}] input, "
            f"but its card lists {k} classes, so [1, {k}, {chip}, {chip}] is expected."
        )
    log.info("Segmenting with %s (%s).", engine.name, engine.provider)
    return engine
