"""Default tiling (issue 18): the impulse probe, the local rule, explicit values, and the same map."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from osgeo import gdal
from torch import nn

from geoseg.core import tiling
from geoseg.core.card import CARD_KEY, ModelCard, recommended_tiling
from geoseg.core.predict import SegmentParams, preflight, segment, tiling_plan
from geoseg.core.tiling import (
    Locality,
    Request,
    TilingPlan,
    chip_steps,
    describe,
    impulse_radius,
    local_batch,
    local_crop,
    plan_tiling,
    stride_factor,
)
from geoseg.models.export import export_onnx
from geoseg.models.registry import build_model
from tests.support.helpers import make_raster

W, H = 300, 236  # non-square, not a multiple of the chip
VALUES = [0, 3, 7]


def stack(layers: int = 3, dilation: int = 1, channels: int = 3, classes: int = 3) -> nn.Module:
    """3×3 convolutions (BatchNorm in eval mode, ReLU between): receptive radius layers·dilation."""
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    c = channels
    for i in range(layers):
        last = i == layers - 1
        mods.append(nn.Conv2d(c, classes if last else 8, 3, padding=dilation, dilation=dilation))
        if not last:
            mods += [nn.BatchNorm2d(8), nn.ReLU()]
        c = 8
    return nn.Sequential(*mods).eval()


class GlobalPool(nn.Module):
    """A local convolution plus the tile's mean: every output sees every input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + y.mean(dim=(2, 3), keepdim=True)


def torch_run(model: nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def card(chip: int = 32, recommended: dict | None = None) -> dict:
    c = {
        "classes": [{"value": v, "name": f"c{v}", "color": f"#0{v}0{v}0{v}"} for v in VALUES],
        "bands": [1, 2, 3],
        "in_channels": 3,
        "chip_size": chip,
        "normalization": {"mean": [20000.0, 30000.0, 25000.0], "std": [15000.0, 17000.0, 16000.0]},
        "architecture": "custom",
    }
    if recommended is not None:
        c["recommended"] = recommended
    return c


# ---------------------------------------------------------------- the probe
@pytest.mark.parametrize(("model", "radius"), [(stack(3), 3), (stack(1), 1), (stack(2, dilation=4), 8), (stack(6), 6)])
def test_impulse_probe_finds_the_receptive_radius(model, radius):
    assert impulse_radius(torch_run(model), 3, size=64) == radius


def test_impulse_probe_flags_global_context():
    assert impulse_radius(torch_run(GlobalPool().eval()), 3, size=64) is None
    # a field wider than half the probe tile is not local either: the probe cannot tell
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 8, 41, padding=20), nn.ReLU(), nn.Conv2d(8, 3, 41, padding=20)).eval()
    assert impulse_radius(torch_run(wide), 3, size=64) is None  # radius 40 > 31
    assert impulse_radius(torch_run(wide), 3, size=128) == 40
    # nor is a model whose outputs the impulse does not change at all (here every ReLU path dies)
    assert impulse_radius(lambda x: np.zeros((len(x), 3, 64, 64), np.float32), 3, size=64) is None


def test_impulse_probe_ignores_noise_below_the_output_scale():
    """Outputs that do not see the centre but wobble by float noise (1e-9 of a scale-1000 output) are
    not counted; a NaN is."""
    model = stack(3)

    def noisy(x: np.ndarray) -> np.ndarray:
        out = 1000.0 * torch_run(model)(x)
        out[1] += np.random.default_rng(1).normal(0.0, 1e-6, out[1].shape)
        return out

    assert impulse_radius(noisy, 3, size=64) == 3

    def nan_corner(x: np.ndarray) -> np.ndarray:
        out = torch_run(model)(x)
        out[1, 0, 0, 0] = np.nan
        return out

    assert impulse_radius(nan_corner, 3, size=64) is None


def test_impulse_probe_agrees_with_the_gradient_field_of_a_unet():
    """The probe of a real GeoSeg network matches models.receptive's exact (gradient) radius."""
    from geoseg.models.receptive import receptive_field_radius

    unet = build_model("unet", 3, 2, depth=2, base_width=4).eval()
    assert impulse_radius(torch_run(unet), 3, size=64) == receptive_field_radius(unet, 3, size=64) < 31


# ---------------------------------------------------------------- the rule
def test_local_rule_crop_stride_and_chip():
    loc = Locality(3, False, "test")
    req = Request(None, None, None, None, 32)
    plan = plan_tiling(req, loc, 32, lambda chip: True, False, None)
    assert (plan.chip, plan.crop, plan.stride_x, plan.stride_y, plan.rule) == (512, 16, 480, 480, "local")
    assert plan_tiling(req, loc, 32, lambda chip: True, True, None).chip == 2048  # GPU cap
    assert plan_tiling(req, loc, 32, lambda chip: True, True, 700).chip == 672  # not beyond the raster
    assert plan_tiling(req, loc, 32, lambda chip: True, False, 300).chip == 288
    # memory budget: the largest step of the ladder that fits, so a budget that moves a little with the
    # free memory does not move the chip
    assert chip_steps(1024, 32) == [1024, 768, 512, 384, 256, 192, 128, 96, 64, 32]
    for limit in (400, 480, 500, 511):
        assert plan_tiling(req, loc, 32, lambda chip, lim=limit: chip <= lim, False, None).chip == 384
    big = plan_tiling(req, Locality(94, False, "test"), 16, lambda chip: True, False, None)
    assert (big.crop, big.chip, big.stride_x) == (96, 512, 320)  # crop on the model's 8-pixel half-grid
    assert big.chip % 16 == 0 and big.stride_x % 16 == 0
    assert local_crop(3, 1) == 16 and local_crop(17, 32) == 32 and local_crop(40, 1) == 40
    assert plan.overlap == pytest.approx((512 / 480) ** 2) and plan.previous_overlap == 4.0
    # a CPU batch of the local rule holds at most 8 · 256² pixels (BATCH_SIZE counts 256 px tiles)
    assert [local_batch(8, c, False) for c in (256, 384, 512, 1024)] == [8, 3, 2, 1]
    assert local_batch(8, 1024, True) == 8 and local_batch(1, 512, False) == 1


def test_no_gain_or_no_locality_keeps_the_trained_chip():
    req = Request(None, None, None, None, 256)
    for loc in (Locality(None, True, "test"), Locality(3, True, "test"), None):
        plan = plan_tiling(req, loc, 32, lambda chip: True, False, None)
        assert (plan.chip, plan.stride_x, plan.stride_y, plan.crop, plan.rule) == (256, 128, 128, 32, "trained")
    # nothing that fits computes less than stride chip/2: the old default
    tight = plan_tiling(req, Locality(3, False, "test"), 32, lambda chip: chip <= 64, False, None)
    assert (tight.chip, tight.stride_x, tight.rule) == (256, 128, "trained")
    small = plan_tiling(req, Locality(3, False, "test"), 32, lambda chip: True, False, 60)
    assert small.rule == "trained"  # a raster narrower than 4·crop + 32 gains nothing


def test_explicit_values_win():
    loc = Locality(3, False, "test")
    fits = lambda chip: True  # noqa: E731
    plan = plan_tiling(
        Request(128, 100, 90, 10, 32, ("CHIP_SIZE", "STRIDE_X", "STRIDE_Y", "CROP")), loc, 32, fits, 0, None
    )
    assert (plan.chip, plan.stride_x, plan.stride_y, plan.crop) == (128, 100, 90, 10)
    plan = plan_tiling(Request(512, None, None, None, 32, ("CHIP_SIZE",)), loc, 32, fits, False, None)
    assert (plan.chip, plan.crop, plan.stride_x) == (512, 16, 480)
    plan = plan_tiling(Request(None, None, None, 40, 32, ("CROP",)), loc, 32, fits, False, None)
    assert (plan.chip, plan.crop, plan.stride_x) == (512, 40, 432)
    plan = plan_tiling(Request(None, 300, None, None, 32, ("STRIDE_X",)), loc, 32, fits, False, None)
    assert (plan.chip, plan.stride_x, plan.stride_y) == (512, 300, 480)
    glob = plan_tiling(Request(None, None, None, 2, 64, ("CROP",)), None, 32, fits, False, None)
    assert (glob.chip, glob.stride_x, glob.crop) == (64, 32, 2)


def test_stride_factor_matches_the_networks():
    for arch, options in (
        ("unet", {}),
        ("unet", {"depth": 3}),
        ("unet", {"encoder": "resnet18"}),
        ("unetpp", {"depth": 2}),
        ("fcn", {}),
        ("deeplabv3plus", {"output_stride": 8}),
    ):
        model = build_model(arch, 3, 2, **options)
        c = ModelCard.from_dict({**card(), "architecture": arch, "architecture_options": model.options})
        assert stride_factor(c) == model.stride, (arch, options)
    assert stride_factor(ModelCard.from_dict(card())) == 32  # unknown: a multiple of 32


def test_describe_says_how_often_each_pixel_is_computed():
    local = TilingPlan(1024, 992, 992, 16, "local", 256, Locality(3, False, "the model card"))
    assert describe(local) == (
        "Tiles 1024 px, stride 992, crop 16: computes each pixel 1.1× (was 4×); "
        "the model is local: receptive radius 3 px, from the model card."
    )
    glob = TilingPlan(256, 128, 128, 32, "trained", 256, Locality(None, True, "an impulse probe"))
    assert "computes each pixel 4× (was 4×); the model has global context (an impulse probe)" in describe(glob)
    mine = TilingPlan(300, 200, 150, 10, "trained", 300, None, ("STRIDE_X", "STRIDE_Y"))
    assert "stride 200 × 150" in describe(mine) and "computes each pixel 3× (was 4×); STRIDE_X, STRIDE_Y as set" in (
        describe(mine)
    )


# ---------------------------------------------------------------- the card
def test_card_records_global_context_and_stays_compatible():
    assert recommended_tiling(256, 94)["global_context"] is False
    assert recommended_tiling(256, 128)["global_context"] is True  # the gradient probe's cap
    assert recommended_tiling(64, 32)["global_context"] is True  # chip 64: probed on 64 px, cap 32
    assert recommended_tiling(64, 40, probe_size=128)["global_context"] is False
    new = ModelCard.from_dict(card(recommended=recommended_tiling(32, 3)))
    assert tiling.card_locality(new) == Locality(3, False, "the model card")
    assert new.to_dict()["recommended"]["global_context"] is False
    old = ModelCard.from_dict(card(recommended={"crop": 3, "stride": 26, "receptive_field_radius": 3}))
    assert old.recommended.global_context is None and tiling.card_locality(old) is None  # probe it
    assert "global_context" not in old.to_dict()["recommended"]
    with pytest.raises(Exception, match="recommended.global_context must be true or false"):
        ModelCard.from_dict(card(recommended={"crop": 3, "stride": 26, "global_context": "no"}))


# ---------------------------------------------------------------- end to end: same map
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiling")
    raster = str(root / "scene.tif")
    pixels = make_raster(raster, W, H, bands=3, hole=(60, 40, 17, 13))
    local = str(root / "local.onnx")
    old_card = card(recommended={"crop": 3, "stride": 26, "receptive_field_radius": 3})  # no flag: probed
    export_onnx(stack(3), 3, local, metadata={CARD_KEY: json.dumps(old_card)})
    glob = str(root / "global.onnx")
    export_onnx(GlobalPool().eval(), 3, glob, metadata={CARD_KEY: json.dumps(card(chip=48))})
    return raster, pixels, local, glob


def whole_image(model: str, pixels: np.ndarray) -> np.ndarray:
    norm = ModelCard.from_dict(card()).normalization
    valid = (pixels != 0).all(axis=0)
    x = (pixels.astype(np.float32) - np.array(norm.mean, np.float32)[:, None, None]) / np.array(norm.std, np.float32)[
        :, None, None
    ]
    x[:, ~valid] = 0
    logits = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x[None]})[0][0]
    classes = np.array(VALUES, np.uint8)[logits.argmax(axis=0)]
    classes[~valid] = 255
    return classes


def test_local_model_new_default_equals_whole_image_and_old_default(scene, tmp_path):
    raster, pixels, local, _ = scene
    tiling.clear_cache()
    p = SegmentParams(raster, local, str(tmp_path / "new.tif"))
    _, _, _, t = preflight(p)
    assert t.plan is not None and t.plan.rule == "local" and t.plan.locality.source == "an impulse probe"
    assert (t.chip, t.crop, t.stride_x, t.stride_y) == (224, 16, 192, 192)  # the raster's 236-pixel side
    assert len(t.xs) * len(t.ys) == 4 and tiling_plan(p) == t.plan
    r = segment(p)
    assert r.tiles == 4
    old = segment(SegmentParams(raster, local, str(tmp_path / "old.tif"), chip_size=32, stride_x=16, stride_y=16))
    assert old.tiles > 200
    new_map = gdal.Open(p.output_path).ReadAsArray()
    np.testing.assert_array_equal(new_map, whole_image(local, pixels))
    np.testing.assert_array_equal(new_map, gdal.Open(old.output_path).ReadAsArray())


def test_global_model_keeps_its_trained_chip(scene, tmp_path):
    raster, _, _, glob = scene
    p = SegmentParams(raster, glob, str(tmp_path / "g.tif"))
    _, _, _, t = preflight(p)
    assert t.plan.rule == "trained" and t.plan.locality.global_context
    assert (t.chip, t.stride_x, t.stride_y, t.crop) == (48, 24, 24, 6)
    assert "was 4×" in describe(t.plan) and "global context" in describe(t.plan)


def test_explicit_tiling_needs_no_probe(scene, tmp_path, monkeypatch):
    raster, _, local, _ = scene
    tiling.clear_cache()
    monkeypatch.setattr(tiling, "_measure", lambda *a: pytest.fail("probed although every value was given"))
    _, _, _, t = preflight(
        SegmentParams(raster, local, str(tmp_path / "e.tif"), chip_size=64, stride_x=40, stride_y=30, crop=5)
    )
    assert (t.chip, t.stride_x, t.stride_y, t.crop) == (64, 40, 30, 5)


def test_probe_runs_once_per_model_file(scene, tmp_path, monkeypatch):
    raster, _, local, _ = scene
    tiling.clear_cache()
    calls = []
    measure = tiling._measure
    monkeypatch.setattr(tiling, "_measure", lambda *a: calls.append(1) or measure(*a))
    for name in ("a", "b"):
        preflight(SegmentParams(raster, local, str(tmp_path / f"{name}.tif")))
    assert len(calls) == 1


def test_memory_budget_limits_the_default_chip(scene, tmp_path):
    raster, _, local, _ = scene
    c = ModelCard.from_dict(card())
    per_pixel = tiling.model_profile(local, c, None).activation_bytes_per_pixel
    budget = 8 * tiling.tile_bytes(c, 128, per_pixel) / 1e6  # 8 tiles (BATCH_SIZE) of 128 px, not 160
    _, _, _, t = preflight(SegmentParams(raster, local, str(tmp_path / "m.tif"), memory_budget_mb=budget))
    assert (t.chip, t.stride_x, t.crop) == (128, 96, 16)
    _, _, _, t = preflight(SegmentParams(raster, local, str(tmp_path / "m.tif"), memory_budget_mb=budget, batch_size=1))
    assert t.chip == 224  # one tile at a time: the largest chip again


@pytest.mark.parametrize("global_context", [False, True])
def test_a_card_with_the_flag_is_believed_without_a_probe(tmp_path, monkeypatch, global_context):
    raster = str(tmp_path / "r.tif")
    make_raster(raster, W, H, bands=3)
    model = str(tmp_path / "m.onnx")
    rec = {"crop": 5, "stride": 22, "receptive_field_radius": 5, "global_context": global_context}
    export_onnx(stack(3), 3, model, metadata={CARD_KEY: json.dumps(card(recommended=rec))})
    tiling.clear_cache()
    monkeypatch.setattr(tiling, "impulse_radius", lambda *a, **k: pytest.fail("probed a card that says"))
    _, _, _, t = preflight(SegmentParams(raster, model, str(tmp_path / "o.tif")))
    assert t.plan.locality == Locality(5, global_context, "the model card")
    expected = (32, 16, 4) if global_context else (224, 192, 16)
    assert (t.chip, t.stride_x, t.crop) == expected
