"""Pretrained encoders (issue 15): UNet-ResNet, the weights table, the downloader against a local
HTTP server on 127.0.0.1 (never the internet), band adaptation, the card, FREEZE_ENCODER_EPOCHS."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from geoseg.core.card import ModelCard
from geoseg.core.checkpoint import load_checkpoint, model_from_checkpoint
from geoseg.core.chips import ExportParams, export_chips
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.train import TrainParams, train, validate
from geoseg.core.weights import NAMED_WEIGHTS, cache_dir, download, resolve_weights
from geoseg.models.registry import build_model
from geoseg.models.resnet import RESNET_LAYOUTS, ResNetEncoder, adapt_first_conv, load_torchvision_weights
from tests.support.helpers import make_raster, standard_labels
from tests.support.pretrained import Handler, file_server, named_for, write_weights

pytestmark = pytest.mark.core

TINY_DECODER = {"base_width": 2}


@pytest.fixture
def server(monkeypatch) -> Iterator[type[Handler]]:
    """The local file server; GEOSEG_WEIGHTS_BASE_URL points the table at it."""
    with file_server() as (handler, base):
        monkeypatch.setenv("GEOSEG_WEIGHTS_BASE_URL", base)
        yield handler


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("chips")
    raster = str(root / "r.tif")
    make_raster(raster, 96, 64, bands=4)
    labels = standard_labels(str(root / "l.gpkg"))
    out = str(root / "chips")
    export_chips(ExportParams(raster, labels, out, class_field="cls", chip_size=32, validation_fraction=0.25))
    return out


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("name", list(RESNET_LAYOUTS))
def test_unet_resnet_keys_are_torchvisions_and_output_matches_input(name):
    with torch.device("meta"):  # ResNet-34/50: keys and shapes only, nothing allocated
        model = build_model("unet", 4, 3, encoder=name)
    keys = set(model.encoder.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer4.0.downsample.0.weight"} <= keys
    assert ("layer1.0.conv3.weight" in keys) == (name == "resnet50")


def test_unet_resnet_forward_any_size_and_plain_unet_stays_default():
    model = build_model("unet", 3, 2, encoder="resnet18", base_width=2).eval()
    out = model(torch.randn(1, 3, 45, 37))
    assert out.shape == (1, 2, 45, 37)
    assert type(build_model("unet", 3, 2)).__name__ == "UNet"


def test_adapt_first_conv_like_timm():
    w = torch.randn(64, 3, 7, 7)
    four, how = adapt_first_conv(w, 4)
    assert torch.allclose(four[:, 3], w[:, 0] * 0.75) and torch.allclose(four[:, :3], w * 0.75)
    assert "3 → 4" in how and "3/4" in how
    w13 = torch.randn(64, 13, 7, 7)
    twelve, _ = adapt_first_conv(w13, 12)
    assert torch.allclose(twelve, w13[:, :12] * 13 / 12)
    one, _ = adapt_first_conv(w, 1)
    assert torch.allclose(one[:, 0], w.sum(1))
    same, how = adapt_first_conv(w, 3)
    assert same is w and how.startswith("none")


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_initialised_encoder_equals_the_file(tmp_path, layout):
    path = write_weights(tmp_path / "w.pth", "resnet18", 13, layout)
    model = build_model("unet", 13, 2, encoder="resnet18", encoder_weights=path)
    state = torch.load(path, weights_only=True)
    own = model.encoder.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    assert model.encoder_init == {"weights_in_channels": 13, "first_conv": "none (13 bands, as the weights)"}


def test_weights_for_another_resnet_are_named(tmp_path):
    path = write_weights(tmp_path / "w18.pth", "resnet18")
    with pytest.raises(ValueError, match="are resnet18 weights, not resnet34 weights"):
        load_torchvision_weights(ResNetEncoder("resnet34"), path)


# ---------------------------------------------------------------- table
def test_table_entries_are_complete():
    assert {"resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet"} <= set(NAMED_WEIGHTS)
    for w in NAMED_WEIGHTS.values():
        assert w.encoder in RESNET_LAYOUTS and w.url.startswith("https://") and w.licence and w.scaling
        assert f"-{w.sha256}.pth" in w.file_name and len(w.sha256) == 8  # torch.hub's hash-prefix convention
    assert len(NAMED_WEIGHTS["resnet50_sentinel2_all_dino"].bands) == 13


# ---------------------------------------------------------------- downloader
def test_download_verifies_and_caches(server, tmp_path):
    data = bytes(range(256)) * 12_000  # 3 MB: several chunks
    w = named_for(data)
    server.files[w.file_name] = data
    fractions: list[float] = []
    target = str(tmp_path / "cache" / "weights" / w.file_name)
    digest = download(w, target, fractions.append)
    assert digest == hashlib.sha256(data).hexdigest() and open(target, "rb").read() == data
    assert fractions[-1] == 1.0 and len(fractions) >= 3
    assert os.listdir(os.path.dirname(target)) == [w.file_name]  # no partial left


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    data = b"y" * 1000
    w = named_for(data, sha="00000000")
    server.files[w.file_name] = data
    target = str(tmp_path / "cache" / "weights" / w.file_name)
    with pytest.raises(GeoSegError, match="does not have the published checksum.*nothing was kept") as e:
        download(w, target)
    assert e.value.param == "ENCODER_WEIGHTS"
    assert not os.path.exists(tmp_path / "cache")  # not the file, not a partial, not the folders made for it


def test_dropped_connection_keeps_nothing(server, tmp_path):
    data = b"z" * 2_000_000
    w = named_for(data)
    server.files[w.file_name] = data
    server.drop.add(w.file_name)
    target = str(tmp_path / "cache" / "weights" / w.file_name)
    with pytest.raises(GeoSegError, match="was interrupted.*nothing was kept.*Fetch .* by hand"):
        download(w, target)
    assert not os.path.exists(tmp_path / "cache")


def test_cancel_keeps_nothing(server, tmp_path):
    data = b"c" * 3_000_000
    w = named_for(data)
    server.files[w.file_name] = data
    target = str(tmp_path / "cache" / "weights" / w.file_name)
    with pytest.raises(Cancelled):
        download(w, target, cancelled=lambda: True)
    assert not os.path.exists(tmp_path / "cache")


def test_offline_names_the_file_and_the_folder(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GEOSEG_WEIGHTS_BASE_URL", f"http://127.0.0.1:{port}")
    w = NAMED_WEIGHTS["resnet34_imagenet"]
    folder = cache_dir(str(tmp_path / "profile"))
    with pytest.raises(GeoSegError) as e:
        resolve_weights("resnet34_imagenet", "resnet34", str(tmp_path / "profile"))
    msg = str(e.value)
    assert "offline?" in msg and w.file_name in msg and w.url in msg and folder in msg
    assert "\n" not in msg and not os.path.exists(folder)


def test_named_weights_resolve_from_the_cache_without_the_network(server, tmp_path, monkeypatch):
    data = open(write_weights(tmp_path / "w.pth"), "rb").read()
    w = named_for(data)
    monkeypatch.setitem(NAMED_WEIGHTS, w.name, w)
    server.files[w.file_name] = data
    first = resolve_weights(w.name, "resnet18", str(tmp_path / "c"))
    second = resolve_weights(w.name, "resnet18", str(tmp_path / "c"))
    assert server.hits == [w.file_name]  # downloaded once
    assert first == second and first.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("spec", "encoder", "match"),
    [
        ("resnet99_imagenet", "resnet18", "unknown weight name 'resnet99_imagenet'"),
        ("resnet50_imagenet", "resnet34", "resnet50_imagenet are resnet50 weights, but the encoder is resnet34"),
        ("/no/such/weights.pth", "resnet18", "file not found"),
    ],
)
def test_bad_weight_specs(spec, encoder, match):
    with pytest.raises(GeoSegError, match=match) as e:
        resolve_weights(spec, encoder)
    assert e.value.param == "ENCODER_WEIGHTS"


# ---------------------------------------------------------------- training
def run_params(chips, tmp_path, **kw) -> TrainParams:
    kw.setdefault("model_options", TINY_DECODER)
    return TrainParams(chips, str(tmp_path / "m.pt"), epochs=1, batch_size=4, device="cpu", augment=False, **kw)


def test_train_from_named_weights_records_the_card(server, chips, tmp_path, monkeypatch):
    data = open(write_weights(tmp_path / "w.pth", "resnet18", 3), "rb").read()  # RGB weights, 4-band chips
    w = named_for(data)
    monkeypatch.setitem(NAMED_WEIGHTS, w.name, w)
    server.files[w.file_name] = data
    p = run_params(chips, tmp_path, encoder="resnet18", encoder_weights=w.name, weights_cache=str(tmp_path / "c"))
    r = train(p)
    card = r.card
    assert card.encoder is not None and card.encoder.name == "resnet18" and card.encoder.weights == w.name
    assert card.encoder.weights_sha256 == hashlib.sha256(data).hexdigest()
    assert card.encoder.weights_in_channels == 3 and "3 → 4 bands" in (card.encoder.first_conv or "")
    assert "weights_cache" not in (card.training or {})
    # the checkpoint rebuilds without the weights file, and segments like any model
    state = load_checkpoint(r.model_path)
    model = model_from_checkpoint(state).eval()
    assert model.options["encoder"] == "resnet18"
    x = torch.randn(1, 4, 40, 40)
    assert model(x).shape == (1, len(card.classes), 40, 40)
    assert ModelCard.from_json(card.to_json()) == card


def test_freeze_encoder_epochs_keeps_the_encoder(chips, tmp_path):
    path = write_weights(tmp_path / "w.pth", "resnet18", 4)
    p = run_params(chips, tmp_path, encoder="resnet18", encoder_weights=path, freeze_encoder_epochs=1)
    r = train(p)
    trained = load_checkpoint(r.model_path)["state_dict"]
    file = torch.load(path, weights_only=True)
    assert torch.equal(trained["encoder.layer2.0.conv1.weight"], file["layer2.0.conv1.weight"])  # frozen
    torch.manual_seed(0)  # the run's seed: the decoder's initial weights
    start = build_model("unet", 4, len(r.card.classes), encoder="resnet18", **TINY_DECODER).state_dict()
    assert not torch.equal(trained["decoder.0.0.0.weight"], start["decoder.0.0.0.weight"])  # it learned
    assert np.isfinite(r.history[0]["train_loss"])


@pytest.mark.parametrize(
    ("kw", "param", "match"),
    [
        ({"encoder": "resnet18", "architecture": "fcn"}, "ENCODER", "fcn has no ResNet encoder"),
        ({"encoder_weights": "resnet18_imagenet"}, "ENCODER_WEIGHTS", "plain unet has no pretrained encoder"),
        ({"freeze_encoder_epochs": 2, "encoder": "resnet18"}, "FREEZE_ENCODER_EPOCHS", "no pretrained encoder"),
        (
            {"encoder": "resnet34", "model_options": {"encoder": "resnet18"}},
            "ENCODER",
            "MODEL_OPTIONS sets encoder",
        ),
    ],
)
def test_encoder_parameter_errors(chips, tmp_path, kw, param, match):
    with pytest.raises(GeoSegError, match=match) as e:
        validate(run_params(chips, tmp_path, **kw))
    assert e.value.param == param
    assert not os.listdir(tmp_path)
