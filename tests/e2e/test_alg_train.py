"""geoseg:train and geoseg:exportonnx through scripts/qgis_process and processing.run."""

from __future__ import annotations

import json
import os
import re

import onnx
import pytest
import torch
from qgis.core import QgsProcessingException

from geoseg.core.card import CARD_KEY, ModelCard
from geoseg.core.options import ARCHITECTURES
from tests.support.chips import make_chips
from tests.support.helpers import qgis_process, tree_snapshot

TINY = {
    "unet": {"base_width": 4, "depth": 2},
    "unetpp": {"base_width": 4, "depth": 2},
    "deeplabv3plus": {"encoder": "resnet18", "decoder_channels": 8},
    "fcn": {"base_width": 4},
}


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    return make_chips(str(tmp_path_factory.mktemp("trainchips")), 128, 96, bands=4)


def outputs(stdout: str) -> dict[str, str]:
    block = stdout.split("Results", 1)[-1]
    return dict(re.findall(r"^(\w+):\t(.*)$", block, flags=re.M))


@pytest.mark.parametrize("index, arch", list(enumerate(ARCHITECTURES)))
def test_qgis_process_train_every_architecture(chips, tmp_path, index, arch):
    model = str(tmp_path / f"{arch} model.pt")
    proc = qgis_process(
        "run",
        "geoseg:train",
        "--",
        f"CHIPS={chips}",
        f"OUTPUT_MODEL={model}",
        f"ARCHITECTURE={index}",
        "EPOCHS=2",
        "BATCH_SIZE=4",
        "DEVICE=1",
        f"MODEL_OPTIONS={json.dumps(TINY[arch])}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = outputs(proc.stdout)
    assert out["OUTPUT_MODEL"] == model and out["OUTPUT_ONNX"] == model[:-3] + ".onnx"
    assert out["METRICS"] == model[:-3] + ".metrics.csv"
    assert 0.0 <= float(out["VAL_MIOU"]) <= 1.0 and out["BEST_EPOCH"] in ("1", "2")
    for key in ("OUTPUT_MODEL", "OUTPUT_ONNX", "METRICS"):
        assert os.path.getsize(out[key]) > 0
    card = ModelCard.from_json(torch.load(model, weights_only=True)["card"])  # stored as plain JSON text
    assert card.architecture == arch
    meta = {p.key: p.value for p in onnx.load(out["OUTPUT_ONNX"]).metadata_props}
    assert ModelCard.from_json(meta[CARD_KEY]).architecture == arch


def test_processing_exportonnx_and_refusals(geoseg_provider, chips, tmp_path):
    import processing

    res = processing.run(
        "geoseg:train",
        {
            "CHIPS": chips,
            "OUTPUT_MODEL": str(tmp_path / "m.pt"),
            "EPOCHS": 1,
            "BATCH_SIZE": 4,
            "DEVICE": 1,
            "MODEL_OPTIONS": json.dumps(TINY["unet"]),
        },
    )
    assert os.path.exists(res["OUTPUT_ONNX"])
    out = processing.run("geoseg:exportonnx", {"MODEL": res["OUTPUT_MODEL"], "OUTPUT": str(tmp_path / "again.onnx")})
    meta = {p.key: p.value for p in onnx.load(out["OUTPUT"]).metadata_props}
    classes = [c.to_dict() for c in ModelCard.from_json(meta[CARD_KEY]).classes]
    assert classes == json.load(open(os.path.join(chips, "dataset.json")))["classes"]
    before = tree_snapshot(str(tmp_path))
    with pytest.raises(QgsProcessingException, match="already exists"):
        processing.run("geoseg:train", {"CHIPS": chips, "OUTPUT_MODEL": res["OUTPUT_MODEL"], "EPOCHS": 1, "DEVICE": 1})
    with pytest.raises(QgsProcessingException, match="MODEL_OPTIONS is not valid JSON"):
        processing.run("geoseg:train", {"CHIPS": chips, "OUTPUT_MODEL": str(tmp_path / "n.pt"), "MODEL_OPTIONS": "{"})
    with pytest.raises(QgsProcessingException, match="has no chips.csv"):
        processing.run("geoseg:train", {"CHIPS": str(tmp_path), "OUTPUT_MODEL": str(tmp_path / "n.pt")})
    assert tree_snapshot(str(tmp_path)) == before


def test_qgis_process_refuses_malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "geoseg-checkpoint", "payload": Evil(str(marker))}, evil)
    proc = qgis_process("run", "geoseg:exportonnx", "--", f"MODEL={evil}", f"OUTPUT={tmp_path / 'e.onnx'}")
    assert proc.returncode != 0
    assert "refuses to load it" in proc.stdout + proc.stderr
    assert not marker.exists() and not (tmp_path / "e.onnx").exists()


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
