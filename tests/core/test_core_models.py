"""Networks, registry, ONNX export and receptive field: pure torch, tiny widths to stay fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from geoseg.core.card import CARD_KEY
from geoseg.core.options import ARCHITECTURES
from geoseg.models.export import export_onnx
from geoseg.models.receptive import receptive_field_radius
from geoseg.models.registry import RESNET_ENCODERS, build_model, default_options
from geoseg.models.resnet import RESNET_LAYOUTS, ResNetEncoder

# Tiny variants of every architecture: same code paths as the defaults, a fraction of the work.
TINY: dict[str, dict] = {
    "unet": {"depth": 3, "base_width": 8},
    "unetpp": {"depth": 3, "base_width": 8},
    "deeplabv3plus": {"decoder_channels": 16},
    "fcn": {"base_width": 8},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("bands", [1, 4, 12])
def test_logits_have_input_size_for_any_bands_and_size(name: str, bands: int) -> None:
    model = build_model(name, bands, 3, **TINY[name]).eval()
    with torch.no_grad():
        for h, w in [(100, 75), (64, 64), (33, 47)]:
            out = model(torch.randn(2, bands, h, w))
            assert out.shape == (2, 3, h, w)
            assert out.dtype == torch.float32


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_training_step_reaches_every_parameter(name: str) -> None:
    model = build_model(name, 4, 2, **TINY[name]).train()
    out = model(torch.randn(2, 4, 40, 36))
    nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 40, 36))).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry_names_match_core_options_and_defaults_are_json() -> None:
    for name in ARCHITECTURES:
        defaults = default_options(name)
        assert json.loads(json.dumps(defaults)) == defaults
        model = build_model(name, 3, 2, **TINY[name])
        assert model.architecture == name
        assert model.options == {**defaults, **TINY[name]}
        assert json.loads(json.dumps(model.options)) == model.options
        rebuilt = build_model(name, 3, 2, **model.options)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
    assert default_options("unet") == {
        "depth": 4,
        "base_width": 32,
        "batch_norm": True,
        "dropout": 0.0,
        "encoder": "none",  # the plain UNet stays the default (issue 15)
        "encoder_weights": None,
        "norm": "batch",  # GroupNorm on request (issue 19: the same step however the batch is split)
    }
    assert default_options("deeplabv3plus")["atrous_rates"] == [6, 12, 18]
    assert tuple(RESNET_LAYOUTS) == RESNET_ENCODERS


def test_registry_rejects_unknown_names_options_and_values() -> None:
    with pytest.raises(ValueError, match="unet, unetpp, deeplabv3plus, fcn"):
        build_model("segformer", 3, 2)
    with pytest.raises(ValueError, match=r"widht.*valid: depth, base_width, batch_norm, dropout"):
        build_model("unet", 3, 2, widht=8)
    with pytest.raises(ValueError, match="encoder"):
        build_model("deeplabv3plus", 3, 2, encoder="resnet101")
    for name, bad in [
        ("unet", {"depth": 0}),
        ("unet", {"dropout": 1.5}),
        ("fcn", {"batch_norm": "yes"}),
        ("deeplabv3plus", {"output_stride": 32}),
        ("deeplabv3plus", {"atrous_rates": []}),
        ("unetpp", {"base_width": 2.5}),
    ]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_model(name, 3, 2, **bad)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("unet", 3, 1)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("unet", 0, 2)


def test_registry_and_package_import_without_torch() -> None:
    code = (
        "import sys, geoseg.models, geoseg.models.registry as r; r.default_options('unet'); "
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "False"


def test_unetpp_deep_supervision_list_in_training_last_head_in_eval() -> None:
    model = build_model("unetpp", 2, 3, depth=3, base_width=4, batch_norm=False, deep_supervision=True)
    x = torch.randn(2, 2, 50, 42)
    model.train()
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.shape == (2, 3, 50, 42) for o in outs)
    model.eval()
    with torch.no_grad():
        final = model(x)
    assert isinstance(final, torch.Tensor)
    torch.testing.assert_close(final, outs[-1].detach())
    plain = build_model("unetpp", 2, 3, depth=3, base_width=4).train()
    assert isinstance(plain(x), torch.Tensor)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_onnx_matches_torch_at_other_sizes_and_carries_metadata(name: str, tmp_path) -> None:
    options = {**TINY[name], **({"deep_supervision": True} if name == "unetpp" else {})}
    model = build_model(name, 4, 3, **options).train()
    path = str(tmp_path / f"{name}.onnx")
    card = json.dumps({"in_channels": 4, "architecture": name})
    export_onnx(model, 4, path, sample_size=64, metadata={CARD_KEY: card, "note": "test"})
    assert model.training, "export must restore the training mode"
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert {p.key: p.value for p in proto.metadata_props} == {CARD_KEY: card, "note": "test"}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    model.eval()
    for shape in [(2, 4, 96, 80), (1, 4, 75, 100)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == expected.shape
        assert float(np.abs(got - expected).max()) <= 1e-4


def test_export_rejects_non_string_metadata(tmp_path) -> None:
    model = build_model("fcn", 1, 2, base_width=4)
    with pytest.raises(TypeError):
        export_onnx(model, 1, str(tmp_path / "m.onnx"), metadata={"chip_size": 256})  # type: ignore[dict-item]
    assert not list(tmp_path.iterdir())


def test_resnet_encoder_uses_torchvision_key_names() -> None:
    keys18 = set(ResNetEncoder("resnet18").state_dict())
    assert {
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.weight",
    } <= keys18
    assert not any(k.startswith(("layer1.0.downsample", "fc.")) for k in keys18)
    keys50 = set(ResNetEncoder("resnet50").state_dict())
    assert {"layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "layer3.5.bn3.bias"} <= keys50
    # torchvision's resnet18 / resnet50 state dicts hold 122 / 320 entries, 2 of them fc.*
    assert (len(keys18), len(keys50)) == (120, 318)


def _save_rgb_resnet(path: str, name: str = "resnet18") -> dict[str, torch.Tensor]:
    state = ResNetEncoder(name, in_channels=3).state_dict()
    state = {k: v.clone() for k, v in state.items()}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    torch.save(state, path)
    return state


def test_deeplab_encoder_weights_from_torchvision_layout(tmp_path) -> None:
    path = str(tmp_path / "resnet18.pth")
    saved = _save_rgb_resnet(path)
    model = build_model("deeplabv3plus", 5, 2, encoder_weights=path, decoder_channels=16)
    assert model.options["encoder_weights"] == path
    loaded = model.encoder.state_dict()
    rgb = saved["conv1.weight"]
    # as timm/smp adapt it (issue 15): R, G, B, R, G repeated, scaled by 3/5
    torch.testing.assert_close(loaded["conv1.weight"], rgb[:, [0, 1, 2, 0, 1]] * (3 / 5))
    assert "3 → 5 bands" in model.encoder_init["first_conv"]
    for key, value in loaded.items():
        if key != "conv1.weight":
            torch.testing.assert_close(value, saved[key], msg=key)
    single = build_model("deeplabv3plus", 1, 2, encoder_weights=path, decoder_channels=16)
    torch.testing.assert_close(single.encoder.conv1.weight.detach(), rgb.sum(dim=1, keepdim=True))


def test_deeplab_encoder_weights_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_model("deeplabv3plus", 3, 2, encoder_weights=str(tmp_path / "missing.pth"))
    path = str(tmp_path / "resnet18.pth")
    _save_rgb_resnet(path)
    with pytest.raises(ValueError, match="are resnet18 weights, not resnet34 weights"):
        build_model("deeplabv3plus", 3, 2, encoder="resnet34", encoder_weights=path, decoder_channels=16)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="readable"):
        build_model("deeplabv3plus", 3, 2, encoder_weights=str(junk), decoder_channels=16)


def _conv_stack(n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(2 if i == 0 else 4, 4, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_receptive_field_radius() -> None:
    assert receptive_field_radius(_conv_stack(3), 2, size=32) == 3
    assert receptive_field_radius(_conv_stack(5), 2, size=32) == 5
    unet = build_model("unet", 3, 2, depth=2, base_width=4).train()
    assert receptive_field_radius(unet, 3, size=64) > 16
    assert unet.training and next(unet.parameters()).dtype == torch.float32
    assert receptive_field_radius(build_model("deeplabv3plus", 3, 2, decoder_channels=8), 3, size=64) == 32


def test_unet_group_norm_is_per_sample() -> None:
    """MODEL_OPTIONS {"norm": "group"}: GroupNorm layers, and a sample's logits do not depend on the rest of
    its batch in training mode (BatchNorm's do): what makes a run split over several GPUs equal one process."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    group = build_model("unet", 3, 2, depth=2, base_width=4, norm="group").train()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in group.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.modules())
    torch.testing.assert_close(group(x)[:2], group(x[:2]))
    batch = build_model("unet", 3, 2, depth=2, base_width=4).train()
    assert not torch.allclose(batch(x)[:2], batch(x[:2]))
    with pytest.raises(ValueError, match="norm group applies to the plain UNet"):
        build_model("unet", 3, 2, encoder="resnet18", norm="group")
