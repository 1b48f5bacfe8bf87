"""Tiled prediction (geoInfer done right): any raster → georeferenced class map.

Tiles lie on the chip grid (origins 0, s, 2s, …, the last shifted to the raster edge, no
duplicates). Each tile contributes only its centre: CROP pixels are dropped at every tile edge
that is not the raster's own edge, and neighbouring kept regions meet exactly, so every pixel
is written once. For a model whose receptive field reaches no further than CROP pixels the
result equals whole-image inference.

The raster is streamed one strip of tiles at a time (memory does not grow with its height),
tiles are predicted in batches, and the output is written under a temporary name and renamed
only when complete. Reading, inference and writing overlap in three threads (core.stream), so a
run goes at the speed of the model; this module decides what they run: the working grid, the
tiling, the model and its batch size (chosen within a memory budget), and the steps after.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from typing import cast

from osgeo import gdal, osr

from .backends import Backend, model_lanes, open_backend, read_model, read_model_card
from .card import ModelCard
from .errors import GeoSegError, IsCancelled, Progress
from .extent import clip_to_extent
from .foreign import ModelIO, OpenedModel
from .gdalx import with_gdal_exceptions
from .grid import Tiling, make_tiling
from .memory import memory_budget_mb
from .options import TTA_CHOICES, values
from .params import SegmentParams  # defined once there, with its front-end metadata
from .raster import MASK_NODATA, BlockGrid, RasterInfo, open_raster, raster_info, set_category_names
from .resample import GridPlan, plan_grid, warp_to_grid, warped_source
from .staging import check_new_file, remove_stale_outputs, staged_file
from .stream import (
    PROB_NODATA,
    ClassRule,
    Inference,
    PyramidWriter,
    class_rule,
    new_map,
    stream_tiles,
)
from .tiling import (
    Request,
    TilingPlan,
    describe,
    local_batch,
    model_profile,
    plan_tiling,
    stride_factor,
    tile_bytes,
)
from .tta import view_count

log = logging.getLogger("geoseg")

TTA_VALUES = values(TTA_CHOICES)

__all__ = [
    "SegmentParams",
    "SegmentResult",
    "check_params",
    "choose_batch_size",
    "compatibility_warnings",
    "preflight",
    "read_model_card",
    "segment",
    "tile_memory_bytes",
    "tiling_plan",
]


@dataclass(frozen=True)
class SegmentResult:
    output_path: str
    probabilities_path: str | None
    card: ModelCard
    backend: str
    provider: str
    tiles: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    batch_size: int = 0  # the batch size the run started with (chosen, when BATCH_SIZE was 0)
    final_batch_size: int = 0  # lower than batch_size when out-of-memory errors halved it
    vector_path: str | None = None  # OUTPUT_VECTOR, when written


@with_gdal_exceptions
def compatibility_warnings(
    card: ModelCard, raster_path: str, info: RasterInfo | None = None, grid: bool = True
) -> list[str]:
    """Differences between the raster and the training data that may hurt the result (`grid` False:
    bands only, as the pixel size and CRS are the working grid's business: core.resample)."""
    info = info or raster_info(open_raster(raster_path), raster_path)
    out = []
    if info.band_count < card.in_channels:
        out.append(f"The raster has {info.band_count} bands, but the model was trained on {card.in_channels}.")
    elif info.band_count > card.in_channels:
        out.append(f"The raster has {info.band_count} bands; the model reads bands {list(card.bands)} only.")
    px = card.pixel_size
    if not grid:
        return out
    if px and any(abs(a - b) > 0.01 * abs(b) for a, b in zip(info.pixel_size, px, strict=False)):
        out.append(
            f"The raster's pixel size ({info.pixel_size[0]:g} × {info.pixel_size[1]:g}) differs from the "
            f"training data's ({px[0]:g} × {px[1]:g}); resample it to the training resolution for best results."
        )
    crs = card.crs.wkt if card.crs else None
    if crs and info.srs is not None:
        trained = osr.SpatialReference()
        trained.ImportFromWkt(crs)
        if not trained.IsSame(info.srs):
            name = (card.crs.authid if card.crs else None) or trained.GetName()
            out.append(f"The raster's CRS ({info.srs.GetName()}) differs from the training data's ({name}).")
    return out


def _resolve(
    p: SegmentParams, card: ModelCard, io: ModelIO | None = None, info: RasterInfo | None = None
) -> TilingPlan:
    """CHIP_SIZE, STRIDE_X/Y and CROP of a run (core.tiling): what the user set, else for a local model
    the largest chip that fits the memory budget with crop max(r, 16) and stride chip − 2·crop, else
    the trained chip, stride chip/2 and crop chip/8. `info`: the raster (working grid) it tiles."""
    trained = io.fixed_size if io and io.fixed_size else card.chip_size
    named = (("CHIP_SIZE", p.chip_size), ("STRIDE_X", p.stride_x), ("STRIDE_Y", p.stride_y), ("CROP", p.crop))
    explicit = tuple(name for name, v in named if v is not None and (v or name == "CROP"))
    req = Request(p.chip_size or None, p.stride_x or None, p.stride_y or None, p.crop, trained, explicit)
    if len(explicit) == 4:  # nothing to choose: no model run
        return plan_tiling(req, None, 1, lambda chip: False, False, None)
    profile = model_profile(p.model_path, card, io, p.output_index)
    on_cuda = _runs_on_cuda(p)
    per_pixel = profile.activation_bytes_per_pixel
    budget = memory_budget_mb(p.memory_budget_mb) or default_budget_mb(cast(Backend, _Device(on_cuda)))
    batch = (io.fixed_batch if io else None) or p.batch_size or 1

    def fits(chip: int) -> bool:
        tiles = local_batch(batch, chip, on_cuda)
        return per_pixel is not None and tiles * tile_bytes(card, chip, per_pixel) <= budget * 1e6

    extent = min(info.width, info.height) if info is not None else None
    return plan_tiling(req, profile.locality, stride_factor(card), fits, on_cuda, extent)


@dataclass(frozen=True)
class _Device:
    """The one thing `default_budget_mb` asks of a backend, before any is opened."""

    on_cuda: bool


def _runs_on_cuda(p: SegmentParams) -> bool:
    """Whether the run's backend will use a GPU (its tile cap and default budget), without building it."""
    if p.device == "cpu":
        return False
    try:
        if p.model_path.lower().endswith(".onnx") and p.backend != "torch":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001  (no such engine installed: segment reports it)
        return False


def _validate(p: SegmentParams) -> None:
    if p.batch_size < 0:
        raise GeoSegError(
            f"BATCH_SIZE must be at least 1, or 0 to choose it automatically (got {p.batch_size}).", param="BATCH_SIZE"
        )
    if p.memory_budget_mb < 0:
        raise GeoSegError(
            f"The memory budget must be 0 (none) or a positive number of MB (got {p.memory_budget_mb}).",
            param="MEMORY_BUDGET",
        )
    for what, path in (("OUTPUT", p.output_path), ("OUTPUT_PROBABILITIES", p.probabilities_path)):
        if path is None:
            continue
        if not path.lower().endswith((".tif", ".tiff")):
            raise GeoSegError(f"{what} must be a GeoTIFF file name ending in .tif (got {path}).", param=what)
        check_new_file(path, what, param=what)
    if p.probabilities_path and os.path.abspath(p.probabilities_path) == os.path.abspath(p.output_path):
        raise GeoSegError("OUTPUT_PROBABILITIES must differ from OUTPUT.", param="OUTPUT_PROBABILITIES")
    _validate_regions(p)


def _validate_regions(p: SegmentParams) -> None:
    """SIEVE, TTA and OUTPUT_VECTOR (issue 17)."""
    if p.sieve < 0:
        raise GeoSegError(f"SIEVE must be at least 0 (got {p.sieve}); 0 is off.", param="SIEVE")
    if p.tta not in TTA_VALUES:
        raise GeoSegError(f"TTA must be one of {', '.join(TTA_VALUES)} (got {p.tta}).", param="TTA")
    if p.vector_path is None:
        return
    if not p.vector_path.lower().endswith(".gpkg"):
        raise GeoSegError(
            f"OUTPUT_VECTOR must be a GeoPackage file name ending in .gpkg (got {p.vector_path}).",
            param="OUTPUT_VECTOR",
        )
    check_new_file(p.vector_path, "OUTPUT_VECTOR", param="OUTPUT_VECTOR")


MAX_AUTO_BATCH = {"cpu": 8, "cuda": 64}  # beyond these a larger batch buys no throughput (CPU: measured)


def tile_memory_bytes(engine: Backend, card: ModelCard, chip: int) -> float:
    """Memory one tile of a batch needs during inference: its input, the network's activations
    (measured per pixel on a small probe, an upper bound: every intermediate counted) and logits."""
    return tile_bytes(card, chip, engine.activation_bytes_per_pixel(card.in_channels))


def default_budget_mb(engine: Backend) -> float:
    """Without a budget, a batch may use half of the GPU's free memory, or a quarter of the RAM
    still available (the rest is for the reader, the writer and everything else running)."""
    if engine.on_cuda:
        try:
            import torch

            free, _ = torch.cuda.mem_get_info()
            return 0.5 * free / 1e6
        except Exception:  # noqa: BLE001  (onnxruntime on CUDA without a CUDA torch)
            return 2000.0
    try:
        with open("/proc/meminfo") as f:
            avail: float = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):  # not Linux
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (AttributeError, OSError, ValueError):  # Windows: no sysconf
            avail = 8e9
    return 0.25 * avail / 1e6


def choose_batch_size(
    engine: Backend, card: ModelCard, chip: int, requested: int, budget_mb: float
) -> tuple[int, float]:
    """(batch size, bytes per tile): `requested`, or with 0 the most tiles that fit the budget
    (at least 1, at most what still pays off on the device). Bytes are 0 when nothing needs them."""
    if requested > 0 and budget_mb <= 0:
        return requested, 0.0
    per_tile = tile_memory_bytes(engine, card, chip)
    if requested > 0:
        return requested, per_tile
    budget = budget_mb if budget_mb > 0 else default_budget_mb(engine)
    cap = MAX_AUTO_BATCH["cuda" if engine.on_cuda else "cpu"]
    batch = max(1, min(cap, int(budget * 1e6 // per_tile)))
    log.info(
        "Batch size %d chosen automatically (about %.0f MB per tile, budget %.0f MB).", batch, per_tile / 1e6, budget
    )
    return batch, per_tile


LANES_MIN_PIXELS = 16e6  # model input pixels: a smaller run (seconds on a CPU) gains less from lanes than they cost


def _lanes(engine: Backend, batch_size: int, tile_bytes: float, budget_mb: float, pixels: float) -> list[Backend]:
    """The model's lanes (backends.model_lanes) for a run of at least LANES_MIN_PIXELS model input pixels
    (tiles × TTA views × chip²) when a batch in each fits the memory budget (the explicit one, else
    the default), else the model alone."""
    if pixels < LANES_MIN_PIXELS:
        return [engine]
    limit = budget_mb if budget_mb > 0 else default_budget_mb(engine)
    lanes = model_lanes(engine, batch_size * tile_bytes, limit)
    if len(lanes) > 1:
        log.info("The model runs in %d lanes of batches, side by side on the CPU cores.", len(lanes))
    return lanes


def _refuse_unusable_input(ds: gdal.Dataset, info: RasterInfo) -> None:
    """A raster without a valid pixel would give an empty map. (A degree raster is read on the
    working grid: core.resample.)"""
    from .raster import any_valid_pixel

    if not any_valid_pixel(ds, info):
        raise GeoSegError(
            "INPUT: every pixel is nodata (its nodata value, NaN or masked), so there is nothing to " "segment."
        )


def _model_bands(model: OpenedModel, info: RasterInfo) -> list[int] | None:
    """0-based raster bands fed to the model (None: all of them, in order). A raster may have more
    bands than the model only for a model without a GeoSeg card, which reads its bands (by default
    the first C, e.g. RGB of an RGBA orthophoto) as Deepness does."""
    card = model.card
    fits = model.foreign and max(card.bands) <= info.band_count
    if info.band_count != card.in_channels and not fits:
        plural = "s" if info.band_count != 1 else ""
        raise GeoSegError(
            f"INPUT has {info.band_count} band{plural}, but the model was trained on "
            f"{card.in_channels} (bands {list(card.bands)}); use a raster with the same bands."
        )
    if list(card.bands) == list(range(1, info.band_count + 1)):
        return None
    log.info("The model reads bands %s of the raster's %d.", list(card.bands), info.band_count)
    return [b - 1 for b in card.bands]


def _check_fixed_size(p: SegmentParams, model: OpenedModel) -> None:
    """A model without a GeoSeg card whose input size is fixed runs at that size only."""
    fixed = model.io.fixed_size
    if model.foreign and fixed and p.chip_size and p.chip_size != fixed:
        raise GeoSegError(
            f"CHIP_SIZE {p.chip_size}: the model's input is fixed at {fixed} × {fixed} pixels; leave "
            f"CHIP_SIZE empty or set it to {fixed}.",
            param="CHIP_SIZE",
        )


@dataclass(frozen=True)
class _Grid:
    """The input raster and the working grid the model reads it on (core.resample)."""

    plan: GridPlan
    input_ds: gdal.Dataset
    input_info: RasterInfo
    back: bool  # write the maps back onto the input's grid (a warp, and OUTPUT_GRID 0)


def _working_grid(p: SegmentParams, card: ModelCard, ds: gdal.Dataset, info: RasterInfo, bands: list[int] | None):
    """(dataset, info, bands, grid) the model reads: the raster itself, or its warped VRT."""
    plan = plan_grid(card, info, p.resolution, p.pixel_size, p.output_grid, p.resampling)
    log.info("Working grid: %s", plan.message)
    grid = _Grid(plan, ds, info, plan.warp and p.output_grid == "input")
    if not plan.warp:
        return ds, info, bands, grid
    vrt, winfo = warped_source(ds, info, plan, p.resampling)
    return vrt, winfo, bands if bands is not None else list(range(info.band_count)), grid


@with_gdal_exceptions
def check_params(p: SegmentParams) -> OpenedModel:
    """The checks of `preflight` that need no raster: values, outputs, the model and its card. The dialog
    runs them before copying a layer GDAL cannot read (adapter.layers), and `preflight` after it."""
    _validate(p)
    model = read_model(p.model_path, p.card_path, p.output_index)
    class_rule(model.io, p.model_threshold)  # refuses MODEL_THRESHOLD without a threshold
    _check_fixed_size(p, model)
    return model


def _tiled_source(p: SegmentParams, model: OpenedModel) -> tuple[gdal.Dataset, RasterInfo, list[int] | None, _Grid]:
    """The dataset the tiles are read from (the raster, clipped to EXTENT, or its warped VRT), its info,
    the bands the model reads and the grid; refuses a raster without the model's bands or valid pixels."""
    ds, blocks = open_raster(p.input_path), None
    if p.extent:
        ds, cut = clip_to_extent(ds, p.extent)
        blocks = BlockGrid(*cut)
    info = replace(raster_info(ds, p.input_path), blocks=blocks)
    bands = _model_bands(model, info)
    _refuse_unusable_input(ds, info)
    return _working_grid(p, model.card, ds, info, bands)


@with_gdal_exceptions
def tiling_plan(p: SegmentParams) -> TilingPlan:
    """The tiling `segment` would use for `p` (core.tiling; `describe` words it), without checking the
    outputs: what a dialog shows while the user fills it in."""
    model = read_model(p.model_path, p.card_path, p.output_index)
    _, info, _, _ = _tiled_source(p, model)
    return _resolve(p, model.card, model.io, info)


@with_gdal_exceptions
def _preflight(p: SegmentParams) -> tuple[OpenedModel, gdal.Dataset, RasterInfo, Tiling, list[int] | None, _Grid]:
    """`preflight`, also returning how to run the model, which raster bands it reads (of the working
    dataset: the raster, or its warped VRT, whose alpha band is never read as data) and the grid."""
    model = check_params(p)
    card = model.card
    ds, info, bands, grid = _tiled_source(p, model)
    plan = _resolve(p, card, model.io, info)
    tiling = make_tiling(info.width, info.height, plan.chip, plan.stride_x, plan.stride_y, plan.crop)
    tiling = replace(tiling, plan=plan)
    log.info("Tiling: %s", describe(plan))
    known = plan.locality.radius if plan.locality and plan.locality.local else None
    radius = known if known is not None else card.recommended.receptive_field_radius if card.recommended else None
    if radius is not None and plan.crop < radius:
        log.info(
            "CROP %d is below the model's receptive-field radius %d: tiles may differ slightly from "
            "whole-image inference near their seams.",
            plan.crop,
            radius,
        )
    return model, ds, info, tiling, bands, grid


def preflight(p: SegmentParams) -> tuple[ModelCard, gdal.Dataset, RasterInfo, Tiling]:
    """Every check that needs no pixel: parameters, outputs, card, band count, tiling (of the working
    grid; `info` is the warped VRT's when the raster is resampled; `tiling.plan` says how it was chosen).
    Choosing a default tiling runs the model once on the CPU, on two blank tiles, the first time a model
    file is seen in the process (core.tiling). The dialogs call it before starting a task; `segment`
    starts with it."""
    model, ds, info, tiling, _, _ = _preflight(p)
    return model.card, ds, info, tiling


@dataclass
class _Engine:
    """The model as one process runs it (segment in-process, or a cluster worker: core.distributed):
    the backend, batched inference (an out-of-memory error lowers its batch size) and the class rule."""

    backend: Backend
    infer: Inference
    rule: ClassRule
    tiles_per_batch: int
    batch_size: int  # as chosen at the start

    def summary(self) -> tuple[str, str, int, int]:
        """(backend, provider, batch size at the start, at the end) for SegmentResult."""
        return self.backend.name, self.backend.provider, self.batch_size, self.infer.final_batch_size


def _pinned(p: SegmentParams, tiling: Tiling) -> SegmentParams:
    """`p` with this run's tiling (and batch) written in: a worker must cut the tiles the client planned
    its parts on, whatever memory it has free (the default chip follows the memory budget)."""
    batch = p.batch_size
    if batch and tiling.plan is not None and tiling.plan.rule == "local":
        batch = local_batch(batch, tiling.chip, _runs_on_cuda(p))
    return replace(
        p, chip_size=tiling.chip, stride_x=tiling.stride_x, stride_y=tiling.stride_y, crop=tiling.crop, batch_size=batch
    )


def _open_engine(p: SegmentParams, model: OpenedModel, tiling: Tiling) -> _Engine:
    card, io, chip = model.card, model.io, tiling.chip
    engine = open_backend(p.model_path, card, p.backend, p.device, chip, io)
    budget = memory_budget_mb(p.memory_budget_mb)
    requested = io.fixed_batch or p.batch_size
    if requested and not io.fixed_batch and tiling.plan is not None and tiling.plan.rule == "local":
        requested = local_batch(requested, chip, engine.on_cuda)  # larger tiles, as many pixels a batch
        if requested != p.batch_size:
            log.info(
                "Batch of %d tiles of %d px (BATCH_SIZE %d counts 256 px tiles on the CPU).",
                requested,
                chip,
                p.batch_size,
            )
    batch_size, tile_bytes = choose_batch_size(engine, card, chip, requested, budget)
    if io.fixed_batch and p.batch_size != io.fixed_batch:
        log.info("The model's batch size is fixed at %d; BATCH_SIZE %d is not used.", io.fixed_batch, p.batch_size)
    rule = class_rule(io, p.model_threshold)
    views = view_count(p.tta)
    lanes = _lanes(engine, batch_size, tile_bytes, budget, tiling.tiles * views * chip * chip)
    engine = lanes[0]  # the first session is dropped when the model runs in lanes of its own
    infer = Inference(engine, batch_size, tile_bytes, budget, p.tta, rule.probabilities_of_batch, lanes)
    if views > 1:  # a batch of B tiles runs as B × views model inputs; the averaged views are probabilities
        rule = ClassRule(True, rule.single, rule.threshold)
    return _Engine(engine, infer, rule, max(1, batch_size // views), batch_size)


@with_gdal_exceptions
def segment(
    p: SegmentParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> SegmentResult:
    """Segment `p.input_path` with `p.model_path`; raise GeoSegError (or Cancelled) on failure.

    With a Dask scheduler (SCHEDULER, or $DASK_SCHEDULER_ADDRESS) the tiles are predicted on its
    workers (core.distributed) and assembled here; everything before and after is the same."""
    from .distributed import ClusterPredict, Engine, scheduler_address  # dask itself only with a scheduler

    t0, started = time.perf_counter(), time.time()
    model, ds, info, tiling, bands, grid = _preflight(p)
    card, io = model.card, model.io
    remove_stale_outputs((p.output_path, p.probabilities_path, p.vector_path), started)  # of a killed run (SIGKILL)
    chip, sx, sy, crop = tiling.chip, tiling.stride_x, tiling.stride_y, tiling.crop  # as _preflight chose them
    warnings = compatibility_warnings(card, p.input_path, grid.input_info, grid=p.resolution == "raster")
    for w in warnings:
        log.warning(w)
    post = p.sieve > 0 or p.vector_path is not None
    predict_progress = _scaled(progress, 0.0, 0.85) if post else progress
    address = scheduler_address(p.scheduler)

    with ExitStack() as stack:  # all files appear complete, or not at all
        run: _Engine | ClusterPredict
        if address:  # the workers open the model; the rule here is only passed along
            engine = Engine(_preflight, _open_engine)
            run = stack.enter_context(ClusterPredict(_pinned(p, tiling), address, info, tiling, card, engine))
            predict: Callable[..., str | None] = run
            tiles_per_batch, rule = 0, class_rule(io, p.model_threshold)
        else:
            run = _open_engine(p, model, tiling)
            predict = partial(stream_tiles, ds, info, tiling, run.infer, card)
            tiles_per_batch, rule = run.tiles_per_batch, run.rule
        out_tmp = stack.enter_context(staged_file(p.output_path, "OUTPUT"))
        prob_tmp = (
            stack.enter_context(staged_file(p.probabilities_path, "OUTPUT_PROBABILITIES"))
            if p.probabilities_path
            else None
        )
        vector_tmp = stack.enter_context(staged_file(p.vector_path, "OUTPUT_VECTOR")) if p.vector_path else None
        nonfinite = _predict_on_grid(
            grid,
            predict,
            (out_tmp, prob_tmp),
            (tiles_per_batch, predict_progress, cancelled, rule, bands),
            card,
        )
        _clean_and_vectorize(p, card, out_tmp, vector_tmp, _scaled(progress, 0.85, 0.15), cancelled)
    if nonfinite:
        warnings.append(nonfinite)
    set_category_names(p.output_path, card.class_names)  # after the rename
    seconds = time.perf_counter() - t0
    backend, provider, batch_size, final_batch = run.summary()
    log.info(
        "Segmented %d tiles (%d × %d px, chip %d, stride %d × %d, crop %d, batch %d) in %.1f s.",
        tiling.tiles,
        info.width,
        info.height,
        chip,
        sx,
        sy,
        crop,
        final_batch,
        seconds,
    )
    return SegmentResult(
        os.path.abspath(p.output_path),
        os.path.abspath(p.probabilities_path) if p.probabilities_path else None,
        card,
        backend,
        provider,
        tiling.tiles,
        seconds,
        warnings,
        batch_size,
        final_batch,
        os.path.abspath(p.vector_path) if p.vector_path else None,
    )


def _predict_on_grid(
    grid: _Grid,
    predict: Callable[..., str | None],
    outputs: tuple[str, str | None],
    args: tuple,
    card: ModelCard,
) -> str | None:
    """`predict(out, prob, *args)` (the bound `stream_tiles`) on the working grid, straight into the staged
    outputs, or (OUTPUT_GRID 0 with a warp) into hidden working-grid files beside them that are then
    warped nearest-neighbour onto the input's grid, strip by strip, and removed."""
    source = grid.input_ds if grid.plan.warp else None
    if not grid.back:
        return predict(*outputs, *args, source=source)
    batch, progress, cancelled, rule, bands = args
    work = [None if o is None else os.path.splitext(o)[0] + ".working.tif" for o in outputs]
    try:
        nonfinite = predict(*work, batch, _scaled(progress, 0.0, 0.85), cancelled, rule, bands, source=source)
        steps = [(w, o, prob) for prob, (w, o) in enumerate(zip(work, outputs, strict=True)) if w and o]
        for i, (w, o, prob) in enumerate(steps):
            _write_back(
                w,
                o,
                grid.input_info,
                card,
                bool(prob),
                _scaled(progress, 0.85 + 0.15 * i / len(steps), 0.15 / len(steps)),
                cancelled,
            )
    finally:
        for tmp in work:
            if tmp and os.path.exists(tmp):
                gdal.GetDriverByName("GTiff").Delete(tmp)
    progress(1.0)
    return nonfinite


def _write_back(
    src: str, dst: str, grid: RasterInfo, card: ModelCard, prob: bool, progress: Progress, cancelled: IsCancelled
) -> None:
    """A map on the working grid onto the input's grid: nearest neighbour (classes, and probabilities
    too, so that they agree with the class map pixel for pixel), nodata kept, styled and with the
    overviews streamed like a map written directly."""
    out = new_map(dst, grid, card, prob)
    try:
        rows: PyramidWriter | None = PyramidWriter(out)
        assert rows is not None
        warp_to_grid(src, rows.write, grid, PROB_NODATA if prob else MASK_NODATA, "nearest", progress, cancelled)
        rows.close()
    finally:
        rows = out = None  # close (flush) before the file is renamed or removed


def _scaled(progress: Progress, start: float, span: float) -> Progress:
    return lambda f: progress(start + span * f)


def _clean_and_vectorize(
    p: SegmentParams,
    card: ModelCard,
    out_tmp: str,
    vector_tmp: str | None,
    progress: Progress,
    cancelled: IsCancelled,
) -> None:
    """The finished (still staged) class map: SIEVE in place, then its polygons into OUTPUT_VECTOR."""
    from .regions import polygonize, sieve_in_place

    if p.sieve > 0:
        sieve_in_place(out_tmp, p.sieve, _scaled(progress, 0.0, 0.4 if vector_tmp else 1.0), cancelled)
    if vector_tmp:
        start = 0.4 if p.sieve > 0 else 0.0
        n = polygonize(out_tmp, vector_tmp, card.class_names, _scaled(progress, start, 1.0 - start), cancelled)
        log.info("OUTPUT_VECTOR: %d polygons.", n)
    progress(1.0)
