"""Issue 15: UNet++ on a ResNet encoder (the registry's "unetpp" with `encoder`): shapes, deep supervision,
encoder weights from a torchvision-layout file, ONNX export, and training through ENCODER."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.models.registry import build_model, has_resnet_encoder
from tests.support.pretrained import resnet_state, write_weights


@pytest.mark.parametrize("size", [(64, 64), (45, 71)])
def test_shapes_any_size(size):
    torch.manual_seed(0)
    net = build_model("unetpp", 4, 3, encoder="resnet18", base_width=4).eval()
    assert has_resnet_encoder("unetpp", net.options) and not has_resnet_encoder("unetpp", {"encoder": "none"})
    with torch.no_grad():
        y = net(torch.randn(2, 4, *size))
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()


def test_deep_supervision_lists_heads_in_training_only():
    net = build_model("unetpp", 3, 2, encoder="resnet18", base_width=4, deep_supervision=True)
    out = net.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, list) and len(out) == 4 and all(o.shape == (2, 2, 32, 32) for o in out)
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_encoder_initialised_from_torchvision_file(tmp_path):
    path = write_weights(str(tmp_path / "r18.pth"), "resnet18", seed=3)
    net = build_model("unetpp", 3, 2, encoder="resnet18", encoder_weights=path, base_width=4)
    want = resnet_state("resnet18", seed=3)
    got = net.encoder.state_dict()
    torch.testing.assert_close(got["conv1.weight"], want["conv1.weight"])
    torch.testing.assert_close(got["layer4.1.conv2.weight"], want["layer4.1.conv2.weight"])
    assert net.encoder_init is not None


def test_plain_unetpp_refuses_encoder_weights(tmp_path):
    with pytest.raises(ValueError, match="encoder_weights need a ResNet encoder"):
        build_model("unetpp", 3, 2, encoder_weights=str(tmp_path / "x.pth"))


def test_onnx_export_matches_torch(tmp_path):
    import onnxruntime as ort

    from geoseg.models.export import export_onnx

    torch.manual_seed(1)
    net = build_model("unetpp", 3, 2, encoder="resnet18", base_width=4).eval()
    path = str(tmp_path / "m.onnx")
    export_onnx(net, 3, path, sample_size=32)
    x = np.random.default_rng(0).normal(size=(1, 3, 48, 40)).astype(np.float32)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
