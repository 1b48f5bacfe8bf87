"""`make gpucheck`: GeoSeg on a CUDA GPU, in one prepared run of a few minutes, as a short report.

Checks (one line each: name, figure, PASS/FAIL; the exit status is 1 when any fails):

1. inference: onnxruntime's CUDA provider with I/O binding (GeoSeg's OnnxBackend) and torch with
   AMP and channels_last (GeoSeg's TorchBackend), each timed against its bare model on the same tiles;
2. training: 20 training steps with AMP, with the chip loader's rate beside them;
3. out of memory: a real CUDA OOM (a batch larger than the GPU) halved by core.memory.retry_halving_batch
   until it fits;
4. auto batch: the batch size segment chooses from the free GPU memory (BATCH_SIZE 0);
5. CUDA = CPU: a mini segment on CUDA against the same segment on the CPU (class maps and probabilities).

Everything it needs (a raster, labels, chips, a model trained by GeoSeg and its ONNX) is made in a
temporary folder, removed at the end. On a machine without CUDA it says so in one line and exits 0.
`--cpu` runs the same checks on the CPU at toy sizes (the OOM simulated with a memory budget): for
developing this script on a machine without a GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TILE_TOLERANCE = 0.999  # class map agreement of a CUDA run with the CPU's (fp32 on both)
AMP_TOLERANCE = 0.99  # class map agreement of a bfloat16/float16 run with fp32
PROB_TOLERANCE = 1e-2  # probabilities, fp32 CUDA (TF32 convolutions) against the CPU
AMP_PROB_TOLERANCE = 5e-2
SPEED_FLOOR = 0.9  # GeoSeg's backend at least this fraction of the bare model's speed
OOM_SAMPLE = (4, 4096, 4096)  # one "sample" of the OOM check: 256 MiB of float32


@dataclass(frozen=True)
class Config:
    """Sizes of one run: real ones on a GPU, toy ones for --cpu."""

    device: str
    width: int  # raster size
    height: int
    chip: int
    base_width: int  # UNet width
    batch: int  # training and timing batch
    tiles: int  # tiles timed per backend
    steps: int = 20


GPU = Config("cuda", 1536, 1024, 256, 16, 16, 256)
CPU = Config("cpu", 256, 192, 64, 4, 4, 16)


@dataclass(frozen=True)
class Check:
    name: str
    figure: str
    ok: bool

    def line(self) -> str:
        return f"{self.name:<22} {self.figure}  {'PASS' if self.ok else 'FAIL'}"


# ---------------------------------------------------------------- CPU-computable parts


def class_agreement(a: Any, b: Any) -> float:
    """Fraction of equal pixels of two class maps of the same shape (1.0 for two empty maps)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"class maps differ in shape: {a.shape} and {b.shape}")
    return float((a == b).mean()) if a.size else 1.0


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of two arrays of the same shape (0.0 for empty ones)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in shape: {a.shape} and {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def speed_ratio(bare_seconds: float, seconds: float) -> float:
    """Speed relative to the bare model: > 1 when GeoSeg's backend is faster."""
    return bare_seconds / seconds if seconds > 0 else float("inf")


def oom_start_batch(total_bytes: float, sample_bytes: float) -> int:
    """A power-of-two batch that needs at least twice the device's memory: it cannot fit."""
    batch = 1
    while batch * sample_bytes < 2 * total_bytes:
        batch *= 2
    return batch


def probe_versions() -> dict[str, Any]:
    """What this machine has, without failing when torch or onnxruntime is missing or broken."""
    info: dict[str, Any] = {"torch": None, "cuda": False, "onnxruntime": None, "providers": []}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # noqa: BLE001  (not installed, or its libraries do not load)
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["providers"] = list(ort.get_available_providers())
    except Exception:  # noqa: BLE001
        pass
    return info


def no_cuda_line(info: dict[str, Any]) -> str:
    torch_part = f"torch {info['torch']} sees none" if info["torch"] else "torch is not installed"
    ort_part = (
        f"onnxruntime {info['onnxruntime']} providers: {', '.join(info['providers']) or 'none'}"
        if info["onnxruntime"]
        else "onnxruntime is not installed"
    )
    return f"gpucheck: no CUDA device ({torch_part}; {ort_part}); nothing to check."


def header_lines(info: dict[str, Any], device: str) -> list[str]:
    """The report's first lines: the device and the versions."""
    lines = []
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"gpucheck on {torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.1f} GiB, "
            f"compute {props.major}.{props.minor}, {torch.cuda.device_count()} device(s))"
        )
        lines.append(
            f"torch {info['torch']} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
            f"onnxruntime {info['onnxruntime']} (providers: {', '.join(info['providers'])})"
        )
    else:
        lines.append(f"gpucheck --cpu (a dry run on the CPU; figures mean nothing), torch {info['torch']}")
        lines.append(f"onnxruntime {info['onnxruntime']} (providers: {', '.join(info['providers'])})")
    return lines


def report(header: Sequence[str], checks: Sequence[Check], seconds: float) -> str:
    failed = [c.name for c in checks if not c.ok]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all passed"
    return "\n".join([*header, *(c.line() for c in checks), f"{len(checks)} checks in {seconds:.0f} s, {verdict}."])


# ---------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Scene:
    root: str
    raster: str
    chips: str
    pt: str
    onnx: str


def make_scene(root: str, cfg: Config) -> Scene:
    """A 4-band UInt16 raster whose classes follow its pixels, chips, and a UNet trained by GeoSeg."""
    import numpy as np
    from osgeo import gdal, osr

    from geoseg.core.chips import ExportParams, export_chips
    from geoseg.core.train import TrainParams, train

    gdal.UseExceptions()
    rng = np.random.default_rng(0)
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.sin(xx / 37.0) + np.cos(yy / 23.0) + 0.3 * rng.standard_normal((h, w))
    labels = np.digitize(field, [-0.7, 0.7]).astype(np.uint8)  # classes 0, 1, 2
    data = np.stack([1000 + 8000 * labels + rng.integers(0, 3000, (h, w)) * (b + 1) for b in range(4)])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    raster, label_raster = os.path.join(root, "scene.tif"), os.path.join(root, "labels.tif")
    for path, arr, kind in ((raster, data, gdal.GDT_UInt16), (label_raster, labels[None], gdal.GDT_Byte)):
        ds = gdal.GetDriverByName("GTiff").Create(path, w, h, len(arr), kind)
        ds.SetGeoTransform((500000.0, 2.0, 0.0, 5300000.0, 0.0, -2.0))
        ds.SetProjection(srs.ExportToWkt())
        for b, band in enumerate(arr):
            ds.GetRasterBand(b + 1).WriteArray(band)
        ds = None
    chips = os.path.join(root, "chips")
    stride = cfg.chip // 2
    export_chips(
        ExportParams(
            raster, None, chips, label_raster=label_raster, chip_size=cfg.chip, stride_x=stride, stride_y=stride
        )
    )
    r = train(
        TrainParams(
            chips,
            os.path.join(root, "model.pt"),
            epochs=1,
            batch_size=cfg.batch,
            device=cfg.device,
            model_options={"base_width": cfg.base_width},
        )
    )
    return Scene(root, raster, chips, r.model_path, r.onnx_path)


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """The best of 3 timed runs after a warm-up (cuDNN tuning, onnxruntime's arena)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(device: str) -> Callable[[], None]:
    if device != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


def _tiles(cfg: Config):
    import numpy as np

    rng = np.random.default_rng(1)
    return rng.standard_normal((cfg.tiles, 4, cfg.chip, cfg.chip)).astype(np.float32)


def _run_all(run: Callable[[Any], Any], tiles: Any, batch: int) -> Any:
    import numpy as np

    return np.concatenate([run(tiles[i : i + batch]) for i in range(0, len(tiles), batch)])


# ---------------------------------------------------------------- 1. inference against the bare model


def check_onnx_inference(scene: Scene, cfg: Config) -> Check:
    import onnxruntime as ort

    from geoseg.core.backends import OnnxBackend

    tiles = _tiles(cfg)
    engine = OnnxBackend(scene.onnx, cfg.device)
    providers = (["CUDAExecutionProvider"] if cfg.device == "cuda" else []) + ["CPUExecutionProvider"]
    bare = ort.InferenceSession(scene.onnx, providers=providers)
    name = bare.get_inputs()[0].name
    sync = _sync(cfg.device)
    ours = _run_all(engine, tiles, cfg.batch)
    theirs = _run_all(lambda x: bare.run(None, {name: x})[0], tiles, cfg.batch)
    t_ours = _timed(lambda: _run_all(engine, tiles, cfg.batch), sync)
    t_bare = _timed(lambda: _run_all(lambda x: bare.run(None, {name: x})[0], tiles, cfg.batch), sync)
    ratio = speed_ratio(t_bare, t_ours)
    agree = class_agreement(ours.argmax(1), theirs.argmax(1))
    on = engine.provider.replace("ExecutionProvider", "") + (" I/O binding" if engine.on_cuda else " session")
    ok = ratio >= SPEED_FLOOR and agree >= TILE_TOLERANCE and engine.on_cuda == (cfg.device == "cuda")
    figure = (
        f"{on} {len(tiles) / t_ours:.0f} tiles/s, bare session {len(tiles) / t_bare:.0f} tiles/s: "
        f"{ratio:.2f}× bare; argmax agreement {agree:.4%}"
    )
    return Check("onnxruntime inference", figure, ok)


def check_torch_inference(scene: Scene, cfg: Config) -> Check:
    import torch

    from geoseg.core.backends import TorchBackend
    from geoseg.core.checkpoint import load_checkpoint, model_from_checkpoint

    tiles = _tiles(cfg)
    engine = TorchBackend(scene.pt, cfg.device)
    model = model_from_checkpoint(load_checkpoint(scene.pt)).to(cfg.device).eval()

    def bare(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(cfg.device)).float().cpu().numpy()

    sync = _sync(cfg.device)
    ours, theirs = _run_all(engine, tiles, cfg.batch), _run_all(bare, tiles, cfg.batch)
    t_ours = _timed(lambda: _run_all(engine, tiles, cfg.batch), sync)
    t_bare = _timed(lambda: _run_all(bare, tiles, cfg.batch), sync)
    ratio = speed_ratio(t_bare, t_ours)
    agree = class_agreement(ours.argmax(1), theirs.argmax(1))
    amp = str(engine.amp).replace("torch.", "") if engine.amp else "fp32"
    ok = ratio >= SPEED_FLOOR and agree >= AMP_TOLERANCE
    figure = (
        f"{amp} autocast + channels_last {len(tiles) / t_ours:.0f} tiles/s, bare fp32 {len(tiles) / t_bare:.0f} "
        f"tiles/s: {ratio:.2f}× bare; argmax agreement {agree:.4%}"
    )
    return Check("torch inference", figure, ok)


# ---------------------------------------------------------------- 2. training steps and the loader


def loader_rate(scene: Scene, cfg: Config) -> tuple[float, int]:
    """(samples/s, workers) of GeoSeg's chip loader: read and collate, as training feeds a step."""
    import torch

    from geoseg.core.dataset import ChipDataset, open_chips
    from geoseg.core.trainer import default_workers

    folder = open_chips(scene.chips)
    workers = default_workers()
    loader = torch.utils.data.DataLoader(
        ChipDataset(folder, folder.train),
        batch_size=cfg.batch,
        shuffle=True,
        num_workers=workers,  # type: ignore[arg-type]
    )
    n, t0 = 0, time.perf_counter()
    for _ in range(2):
        for x, _y in loader:
            n += len(x)
    return n / (time.perf_counter() - t0), workers


def check_training(scene: Scene, cfg: Config) -> Check:
    import torch

    from geoseg.core.dataset import ChipDataset, open_chips
    from geoseg.core.losses import build_loss
    from geoseg.models.registry import build_model

    folder = open_chips(scene.chips)
    data = ChipDataset(folder, folder.train)
    idx = [i % len(data) for i in range(cfg.batch)]
    x = torch.stack([data[i][0] for i in idx]).to(cfg.device)
    y = torch.stack([data[i][1] for i in idx]).to(cfg.device)
    torch.manual_seed(0)
    model = build_model("unet", folder.in_channels, len(folder.classes), base_width=cfg.base_width).to(cfg.device)
    amp, scaler = None, None
    if cfg.device == "cuda":  # as core/trainer.py does
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    model.train()
    loss_fn = build_loss("dice_ce", len(folder.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses: list[float] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))

    sync = _sync(cfg.device)
    step()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    rate = cfg.steps * cfg.batch / seconds
    loaded, workers = loader_rate(scene, cfg)
    finite = all(math.isfinite(v) for v in losses)
    ok = finite and losses[-1] < losses[1]
    kind = str(amp).replace("torch.", "") if amp else "fp32"
    figure = (
        f"{cfg.steps} {kind} steps of batch {cfg.batch} at {cfg.chip}²: {rate:.0f} samples/s "
        f"(loss {losses[1]:.3f} → {losses[-1]:.3f}); loader {loaded:.0f} samples/s with {workers} workers "
        f"({loaded / rate:.2f}× the steps)"
    )
    return Check("training (AMP)", figure, ok)


# ---------------------------------------------------------------- 3. a real OOM, halved


def check_oom(cfg: Config) -> Check:
    import numpy as np

    from geoseg.core.memory import check_budget, retry_halving_batch

    sample = OOM_SAMPLE if cfg.device == "cuda" else (4, 256, 256)
    sample_bytes = 4.0 * float(np.prod(sample))
    halvings: list[int] = []
    if cfg.device == "cuda":
        import torch

        total = float(torch.cuda.get_device_properties(0).total_memory)

        def work(batch: int) -> int:
            x = torch.empty((batch, *sample), dtype=torch.float32, device="cuda")
            x.fill_(1.0)
            n = int(x[:, 0, 0, 0].sum().item())
            del x
            return n

    else:  # a simulated OOM: a memory budget of 64 samples
        budget_mb = 64 * sample_bytes / 1e6
        total = budget_mb * 1e6

        def work(batch: int) -> int:
            check_budget(batch * sample_bytes, budget_mb, f"A batch of {batch}")
            return int(np.ones((batch, *sample), np.float32)[:, 0, 0, 0].sum())

    start = oom_start_batch(total, sample_bytes)
    try:
        n, final = retry_halving_batch(work, start, "gpucheck's allocation", halvings.append)
    finally:
        from geoseg.core.memory import release_cuda_cache

        release_cuda_cache()
    ok = bool(halvings) and final < start and n == final
    figure = (
        f"batch {start} ({start * sample_bytes / 2**30:.0f} GiB) → {final} ({final * sample_bytes / 2**30:.1f} GiB) "
        f"after {len(halvings)} halving(s), recovered"
    )
    return Check("OOM halved", figure, ok)


# ---------------------------------------------------------------- 4. auto batch size


def check_auto_batch(scene: Scene, cfg: Config) -> Check:
    from geoseg.core.backends import OnnxBackend, read_model_card
    from geoseg.core.predict import MAX_AUTO_BATCH, choose_batch_size, default_budget_mb

    card = read_model_card(scene.onnx)
    engine = OnnxBackend(scene.onnx, cfg.device)
    budget = default_budget_mb(engine)
    batch, per_tile = choose_batch_size(engine, card, cfg.chip, 0, 0.0)
    cap = MAX_AUTO_BATCH["cuda" if engine.on_cuda else "cpu"]
    fits = batch * per_tile <= budget * 1e6
    largest = batch == cap or (batch + 1) * per_tile > budget * 1e6
    free = ""
    if cfg.device == "cuda":
        import torch

        free = f"{torch.cuda.mem_get_info()[0] / 2**30:.1f} GiB free, "
    ok = 1 <= batch <= cap and fits and largest and engine.on_cuda == (cfg.device == "cuda")
    figure = (
        f"{free}budget {budget / 1e3:.1f} GB, {per_tile / 1e6:.0f} MB per {cfg.chip}² tile: "
        f"batch {batch} (cap {cap})"
    )
    return Check("auto batch size", figure, ok)


# ---------------------------------------------------------------- 5. CUDA equals CPU


def _segment(scene: Scene, model: str, device: str, tag: str) -> tuple[Any, Any, Any]:
    from osgeo import gdal

    from geoseg.core.predict import SegmentParams, segment

    out, prob = os.path.join(scene.root, f"{tag}.tif"), os.path.join(scene.root, f"{tag}_p.tif")
    r = segment(SegmentParams(scene.raster, model, out, prob, batch_size=0, device=device))
    return gdal.Open(out).ReadAsArray(), gdal.Open(prob).ReadAsArray(), r


def check_cuda_equals_cpu(scene: Scene, cfg: Config, model: str, name: str, agree_min: float, diff_max: float) -> Check:
    classes, probs, r = _segment(scene, model, cfg.device, f"{name}_dev")
    cpu_classes, cpu_probs, _ = _segment(scene, model, "cpu", f"{name}_cpu")
    agree, diff = class_agreement(classes, cpu_classes), max_abs_diff(probs, cpu_probs)
    ok = agree >= agree_min and diff <= diff_max
    figure = (
        f"{r.provider} ({r.tiles} tiles, batch {r.batch_size}) vs CPU: classes {agree:.4%} equal "
        f"(≥ {agree_min:.1%}), probabilities max |Δ| {diff:.2g} (≤ {diff_max:g})"
    )
    return Check(f"segment = CPU ({name})", figure, ok)


# ---------------------------------------------------------------- the run


def run_checks(scene: Scene, cfg: Config) -> list[Check]:
    """Every check in turn; one that raises is a FAIL with its error's first line, and the rest still run."""
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("onnxruntime inference", lambda: check_onnx_inference(scene, cfg)),
        ("torch inference", lambda: check_torch_inference(scene, cfg)),
        ("training (AMP)", lambda: check_training(scene, cfg)),
        ("OOM halved", lambda: check_oom(cfg)),
        ("auto batch size", lambda: check_auto_batch(scene, cfg)),
        (
            "segment = CPU (onnx)",
            lambda: check_cuda_equals_cpu(scene, cfg, scene.onnx, "onnx", TILE_TOLERANCE, PROB_TOLERANCE),
        ),
        (
            "segment = CPU (torch)",
            lambda: check_cuda_equals_cpu(scene, cfg, scene.pt, "torch", AMP_TOLERANCE, AMP_PROB_TOLERANCE),
        ),
    ]
    checks = []
    for name, fn in steps:
        try:
            checks.append(fn())
        except Exception as e:  # noqa: BLE001  (a check that crashes fails; the report goes on)
            text = str(e).strip().splitlines()
            checks.append(Check(name, f"{type(e).__name__}: {text[0] if text else ''}"[:300], False))
        print(checks[-1].line(), flush=True)
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cpu", action="store_true", help="a dry run of every check on the CPU at toy sizes")
    args = parser.parse_args(argv)
    info = probe_versions()
    if not args.cpu and not info["cuda"]:
        print(no_cuda_line(info))
        return 0
    if info["torch"] is None or info["onnxruntime"] is None:
        print(no_cuda_line(info))
        return 0
    import logging

    logging.getLogger("geoseg").setLevel(logging.ERROR)
    cfg = CPU if args.cpu else GPU
    t0 = time.perf_counter()
    header = header_lines(info, cfg.device)
    print("\n".join(header), flush=True)
    root = tempfile.mkdtemp(prefix="geoseg-gpucheck-")
    try:
        scene = make_scene(root, cfg)
        print(
            f"(scene: {cfg.width} × {cfg.height} 4-band UInt16, UNet trained 1 epoch, {time.perf_counter() - t0:.0f} s)"
        )
        checks = run_checks(scene, cfg)
    except Exception as e:  # noqa: BLE001  (the scene itself failed: one FAIL line, no traceback)
        checks = [Check("scene", f"{type(e).__name__}: {str(e).strip()[:300]}", False)]
        print(checks[-1].line())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(header, checks, time.perf_counter() - t0).splitlines()[-1])
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
