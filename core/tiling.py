"""The default tiling of `segment`: as few computed pixels per output pixel as the model allows.

A tile contributes only its centre (CROP pixels are dropped at interior edges), so each output
pixel costs (CHIP / STRIDE_X)·(CHIP / STRIDE_Y) computed pixels. The old default, stride = chip/2,
computes every pixel about 4 times. For a *local* model — one whose outputs see at most r pixels
away (its receptive radius) and nothing global — any crop ≥ r gives the same map as whole-image
inference, so the default becomes

    CROP = max(r, 16) (rounded up to half the stride factor, so the stride stays on the model's
           pooling grid), STRIDE = CHIP − 2·CROP,
    CHIP = the largest size that fits the memory budget with the batch, at most 512 on the CPU and
           2048 on a GPU and no larger than the raster, taken from that cap and a ladder below it
           (2^k and 1.5·2^k, multiples of the model's stride factor) so that it stays the same
           from run to run while the free memory varies.

A model with global context (DeepLabv3+'s image pooling, a fixed input size, a field wider than
the probe) keeps its trained chip and the old defaults (stride chip/2, crop chip/8). Explicit
CHIP_SIZE, STRIDE_X/Y and CROP always win.

Whether a model is local comes from its card (`recommended.receptive_field_radius` with
`recommended.global_context`, written by training) or, for any model without both (an older
card, a Deepness or other foreign ONNX), from an impulse probe: the model's outputs on a blank
tile and on the same tile with its centre pixel changed; the changed outputs' distance from the
centre is the radius, and a change that reaches the tile's border means global context (as does a
probe that changes nothing, not even the centre: not provably local). The probe runs on the CPU
once per model file (path, size, mtime) in a process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .card import ModelCard
from .foreign import ModelIO

if TYPE_CHECKING:
    from .backends import Backend

log = logging.getLogger("geoseg")

MIN_CROP = 16  # pixels: below this the tile-edge saving is negligible and a probe's margin thin
CHIP_CAP = {"cpu": 512, "cuda": 2048}  # CPU: 512 measured fastest (BENCHMARKS.md) and its row cache stays small
CPU_BATCH_PIXELS = 8 * 256 * 256  # a CPU batch beyond this many pixels runs no faster, only bigger (measured)
PROBE_TILE = 256  # pixels: a local model's radius must stay below half of it
IMPULSE = 1000.0  # in normalised units: large, so the change crosses ReLUs and pools everywhere it can
RELATIVE_TOLERANCE = 5e-7  # an output changed when it moved by more than this × the output scale (4 float32 ulps)
DEFAULT_STRIDE_FACTOR = 32  # a model whose card does not say (foreign ONNX): a multiple of 32 suits most nets


# ---------------------------------------------------------------- records
@dataclass(frozen=True)
class Locality:
    """How far a model's outputs see: `radius` pixels, or everything (`global_context`)."""

    radius: int | None
    global_context: bool
    source: str  # where it comes from, for messages: "the model card", "an impulse probe", …

    @property
    def local(self) -> bool:
        return not self.global_context and self.radius is not None


@dataclass(frozen=True)
class TilingPlan:
    """The tiling a run uses and why: `rule` "local" (the new default for a local model) or "trained"
    (the trained chip, stride chip/2, crop chip/8); `explicit` names the parameters the user set."""

    chip: int
    stride_x: int
    stride_y: int
    crop: int
    rule: str
    previous_chip: int  # the chip of the old default (stride chip/2), to compare with
    locality: Locality | None = None
    explicit: tuple[str, ...] = ()

    @property
    def overlap(self) -> float:
        """Computed pixels per output pixel (away from the raster's edges)."""
        return (self.chip / self.stride_x) * (self.chip / self.stride_y)

    @property
    def previous_overlap(self) -> float:
        """The same for the old default tiling, stride = chip/2."""
        return (self.previous_chip / max(1, self.previous_chip // 2)) ** 2


def _times(x: float) -> str:
    return f"{x:.2g}×"


def describe(plan: TilingPlan) -> str:
    """One line for the Segment dialog: the tiling, how often each pixel is computed against the old
    default, and why this tiling."""
    stride = f"{plan.stride_x}" if plan.stride_x == plan.stride_y else f"{plan.stride_x} × {plan.stride_y}"
    text = (
        f"Tiles {plan.chip} px, stride {stride}, crop {plan.crop}: computes each pixel "
        f"{_times(plan.overlap)} (was {_times(plan.previous_overlap)})"
    )
    loc = plan.locality
    if plan.explicit:
        why = f"{', '.join(plan.explicit)} as set"
    elif plan.rule == "local" and loc is not None:
        why = f"the model is local: receptive radius {loc.radius} px, from {loc.source}"
    elif loc is not None and loc.global_context:
        why = f"the model has global context ({loc.source}): its trained chip size is kept"
    else:
        why = "the model's reach is unknown: its trained chip size is kept"
    return f"{text}; {why}."


# ---------------------------------------------------------------- the rule
def stride_factor(card: ModelCard) -> int:
    """The factor the model's input size must be a multiple of to stay on its pooling grid (the
    networks in models/ pad to it; `model.stride` there). From the card's architecture; unknown
    architectures (foreign ONNX) get DEFAULT_STRIDE_FACTOR."""
    options = card.architecture_options or {}
    arch = card.architecture
    if arch in ("unet", "unetpp"):
        return 32 if options.get("encoder", "none") not in (None, "none") else 2 ** int(options.get("depth", 4))
    if arch == "fcn":
        return 32
    if arch == "deeplabv3plus":
        return int(options.get("output_stride", 16))
    return DEFAULT_STRIDE_FACTOR


def local_crop(radius: int, factor: int) -> int:
    """CROP = max(r, MIN_CROP), rounded up to a multiple of factor/2 so that STRIDE = CHIP − 2·CROP is
    a multiple of the stride factor whenever CHIP is (tiles stay on the model's pooling grid)."""
    half = max(1, factor // 2)
    return -(-max(radius, MIN_CROP) // half) * half


def local_chip(crop: int, factor: int, fits: Callable[[int], bool], on_cuda: bool, extent: int | None) -> int | None:
    """The largest chip that `fits` the memory budget among the cap (CHIP_CAP, and the raster's shorter
    side: a larger tile would only compute padding) and the steps below it (`chip_steps`), and that
    computes fewer pixels than the old default (stride ≥ chip/2, i.e. chip > 4·crop); None when there is
    none. Steps, not every multiple of the factor: the budget follows the memory free at the time, and
    a coarse ladder keeps the chosen chip (and so the run) the same from one run to the next."""
    cap = CHIP_CAP["cuda" if on_cuda else "cpu"]
    if extent is not None:
        cap = min(cap, extent)
    for chip in chip_steps(cap // factor * factor, factor):
        if chip <= 4 * crop:
            break
        if fits(chip):
            return chip
    return None


def chip_steps(top: int, factor: int) -> list[int]:
    """`top`, then the sizes 2^k and 1.5·2^k below it that are multiples of `factor`, largest first."""
    steps = {top} if top > 0 else set()
    k = factor
    while k < top:
        steps.update(s for s in (k, k + k // 2) if s < top and s % factor == 0)
        k *= 2
    return sorted(steps, reverse=True)


def local_batch(batch: int, chip: int, on_cuda: bool) -> int:
    """Tiles per batch for a chip the local rule chose: on the CPU at most CPU_BATCH_PIXELS (BATCH_SIZE 8
    counts tiles of 256 px; two 512 px tiles hold as many pixels), on a GPU `batch` as given."""
    return batch if on_cuda else max(1, min(batch, CPU_BATCH_PIXELS // (chip * chip)))


def tile_bytes(card: ModelCard, chip: int, activation_bytes_per_pixel: float) -> float:
    """Memory one tile needs during inference: its input, the network's activations and the logits."""
    return chip * chip * (4.0 * card.in_channels + activation_bytes_per_pixel + 4.0 * card.num_classes)


@dataclass(frozen=True)
class Request:
    """What the user set (None: default) and what the rule needs to know about the run."""

    chip: int | None
    stride_x: int | None
    stride_y: int | None
    crop: int | None
    trained_chip: int  # the card's chip (or the model's fixed input size)
    explicit: tuple[str, ...] = field(default=())


def plan_tiling(
    req: Request,
    locality: Locality | None,
    factor: int,
    fits: Callable[[int], bool],
    on_cuda: bool,
    extent: int | None,
) -> TilingPlan:
    """The tiling of a run: the local rule where the model is local and it saves work, else the trained
    chip with stride chip/2 and crop chip/8; explicit values replace the defaults one by one."""
    previous = req.chip or req.trained_chip
    if locality is not None and locality.local and locality.radius is not None:
        crop = req.crop if req.crop is not None else local_crop(locality.radius, factor)
        chip = req.chip or local_chip(crop, factor, fits, on_cuda, extent)
        if chip is not None and (req.crop is not None or chip > 4 * crop):
            stride = max(1, chip - 2 * crop)
            return TilingPlan(
                chip, req.stride_x or stride, req.stride_y or stride, crop, "local", previous, locality, req.explicit
            )
    chip = previous
    crop = chip // 8 if req.crop is None else req.crop
    return TilingPlan(
        chip, req.stride_x or chip // 2, req.stride_y or chip // 2, crop, "trained", previous, locality, req.explicit
    )


# ---------------------------------------------------------------- the card and the probe
def card_locality(card: ModelCard) -> Locality | None:
    """The card's answer, when it has both the radius and the global-context flag (cards written by
    training since issue 18); None: probe the model."""
    rec = card.recommended
    if rec is None or rec.receptive_field_radius is None or rec.global_context is None:
        return None
    return Locality(rec.receptive_field_radius, rec.global_context, "the model card")


def impulse_radius(run: Callable[[np.ndarray], np.ndarray], channels: int, size: int = PROBE_TILE) -> int | None:
    """Receptive radius of the model `run` (a batch [n, channels, size, size] → scores [n, k, size, size])
    from one forward pass of three tiles: blank, and blank with its centre pixel set to +IMPULSE and to
    −IMPULSE (random signs per channel; both signs, so that a ReLU closed to one is open to the other).
    The radius is the largest Chebyshev distance from the centre of an output that changed by more than
    RELATIVE_TOLERANCE of the output's scale (NaN/inf count as changed). None — not local — when the change
    reaches the tile's border (global context, or a field wider than the probe), or when not even the
    centre output changed (a probe that saw nothing proves nothing).

    Outputs that do not see the centre are computed from identical inputs, so they come out identical:
    the tolerance only guards against rounding noise of the model's own."""
    c = size // 2
    signs = np.where(np.random.default_rng(0).random(channels) < 0.5, -1.0, 1.0)
    x = np.zeros((3, channels, size, size), dtype=np.float32)
    x[1, :, c, c] = IMPULSE * signs
    x[2, :, c, c] = -IMPULSE * signs
    out = np.asarray(run(x), dtype=np.float64)
    base = out[0]
    scale = float(np.nanmax(np.abs(base))) if np.isfinite(base).any() else 1.0
    tol = RELATIVE_TOLERANCE * max(scale, 1e-3)
    with np.errstate(invalid="ignore", over="ignore"):
        changed = ~(np.abs(out[1:] - base) <= tol)  # NaN counts as changed
    hit = changed.any(axis=(0, 1))
    if not hit[c, c]:
        return None
    ys, xs = np.nonzero(hit)
    radius = int(max(np.abs(ys - c).max(), np.abs(xs - c).max()))
    return None if radius >= c - 1 else radius


@dataclass(frozen=True)
class Profile:
    """What the tiling rule needs to know about a model, measured once per file."""

    locality: Locality
    activation_bytes_per_pixel: float | None


_CACHE: dict[tuple, Profile] = {}
_LOCK = threading.Lock()


def _probe_backend(model_path: str, io: ModelIO | None) -> Backend:
    from .backends import OnnxBackend, TorchBackend

    if model_path.lower().endswith(".onnx"):
        return OnnxBackend(model_path, "cpu", io)
    return TorchBackend(model_path, "cpu")


def model_profile(model_path: str, card: ModelCard, io: ModelIO | None, output: int = 0) -> Profile:
    """The model's locality (card, else impulse probe, else unknown) and activation memory per pixel,
    cached per model file (path, size, mtime) and output. A model with a fixed input size has global
    context by definition here (it runs only at that size). Runs the model on the CPU; a model that
    fails is left to `segment`'s own check (open_backend) and gets the trained-chip tiling."""
    st = os.stat(model_path)
    key = (os.path.realpath(model_path), st.st_size, st.st_mtime_ns, output, card.in_channels)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        profile = _measure(model_path, card, io)
        _CACHE[key] = profile
        return profile


def _measure(model_path: str, card: ModelCard, io: ModelIO | None) -> Profile:
    fixed = io.fixed_size if io is not None else None
    if fixed:
        return Profile(Locality(None, True, "its fixed input size"), None)
    known = card_locality(card)
    try:
        engine = _probe_backend(model_path, io)
        per_pixel = engine.activation_bytes_per_pixel(card.in_channels)
        if known is not None:
            return Profile(known, per_pixel)
        radius = impulse_radius(engine, card.in_channels)
    except Exception as e:  # noqa: BLE001  (segment's open_backend reports a broken model properly)
        log.info("The model's receptive field could not be probed (%s); keeping its trained chip size.", e)
        return Profile(known or Locality(None, True, "a failed probe"), None)
    rec = card.recommended
    if radius is not None and rec is not None and rec.receptive_field_radius is not None:
        radius = max(radius, rec.receptive_field_radius)  # the card's (gradient) field is exact: never below it
    locality = Locality(radius, radius is None, "an impulse probe")
    log.info(
        "Impulse probe of %s: %s.",
        os.path.basename(model_path),
        "global context" if radius is None else f"receptive radius {radius} px",
    )
    return Profile(locality, per_pixel)


def measuring() -> bool:
    """Whether a model is being measured now (by another thread: a dialog's planner), so that a caller
    on a UI thread can wait with its events flowing instead of blocking on the measurement."""
    return _LOCK.locked()


def clear_cache() -> None:
    """Forget measured models (tests; a model file rewritten within one mtime tick)."""
    with _LOCK:
        _CACHE.clear()
