"""ONNX export of any GeoSeg network with dynamic batch, height and width, plus model-card metadata.

Exporter choice: the TorchScript tracer (`torch.onnx.export(..., dynamo=False)`, opset 17).
Both it and torch 2.13's default dynamo exporter export all four architectures, and both
reproduce torch's logits in onnxruntime at sizes other than the sample (including sizes that
are not multiples of the stride, because the pad/crop arithmetic is traced symbolically).
The tracer is ~10-40× faster and opset 17 runs on older onnxruntime builds (≥ 1.14).
Measured on 2 CPU cores, default options, 4 bands, 64×64 sample:

    architecture    tracer   dynamo
    unet            0.7 s    15 s
    unetpp          0.8 s    12 s
    deeplabv3plus   0.9 s    11 s
    fcn             0.3 s     8 s

If a later torch drops the tracer, `export_onnx` falls back to the dynamo exporter (opset 18).

`export_onnx` writes `path` itself; GeoSeg's own model files go through
`core.checkpoint.save_onnx`, which hands it a hidden partial path and renames it only once the
model is complete and checked (models/ does not import core).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import onnx
import torch
from torch import nn

log = logging.getLogger("geoseg")

OPSET = 17
DYNAMO_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DYNAMIC_AXES = {
    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
}


HEADS = ("logits", "softmax", "sigmoid")
PROBABILITIES_NAME = "probabilities"


class _Head(nn.Module):
    """Probabilities inside the graph: softmax over the classes, or for a two-class model one sigmoid
    channel p(class 1) = sigmoid(z1 − z0) (= its softmax), as Deepness expects them."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if self.head == "sigmoid":
            return torch.sigmoid(z[:, 1:2] - z[:, 0:1])
        return torch.softmax(z, dim=1)


def _export(model: nn.Module, sample: torch.Tensor, path: str, fixed: bool = False, output: str = OUTPUT_NAME) -> None:
    """Tracer first (fast); dynamo only when the tracer is unavailable or fails."""
    axes = {INPUT_NAME: {0: "batch"}, output: {0: "batch"}} if fixed else DYNAMIC_AXES
    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [output], "dynamic_axes": axes}
    try:
        with warnings.catch_warnings():  # the tracer is chosen deliberately; its deprecation notice is noise
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (sample,), path, opset_version=OPSET, dynamo=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any tracer failure: the dynamo exporter may still succeed
        log.warning("TorchScript ONNX export failed (%s); retrying with the dynamo exporter", exc)
        torch.onnx.export(model, (sample,), path, opset_version=DYNAMO_OPSET, dynamo=True, **kwargs)


def export_onnx(
    model: nn.Module,
    in_channels: int,
    path: str,
    sample_size: int = 64,
    metadata: dict[str, str] | None = None,
    fixed_size: int | None = None,
    head: str = "logits",
) -> None:
    """Write `model` (in eval mode; its mode is restored) to `path` with `metadata` as metadata_props.

    The graph takes float32 `input` [N, in_channels, H, W] and returns `logits`
    [N, K, H, W]; N, H and W are dynamic. With `fixed_size`, H = W = fixed_size (N stays dynamic);
    with `head` "softmax" or "sigmoid" it returns `probabilities` instead ([N, K, H, W], or
    [N, 1, H, W] for the sigmoid of a two-class model). `onnx.checker` must accept the model before
    it is saved in its final form; write to a partial path (core.staging) when a failure must leave nothing.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS} (got {head!r})")
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"ONNX metadata keys and values must be strings; not for {bad}")
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # batch 2: the dynamo fallback would specialise a batch of 1 to a constant
    size = fixed_size or sample_size
    sample = torch.randn(2, in_channels, size, size, device=device)
    net = model if head == "logits" else _Head(model, head)
    try:
        model.eval()
        with torch.no_grad():
            num_classes = int(net(sample).shape[1])
            _export(net, sample, path, fixed_size is not None, OUTPUT_NAME if head == "logits" else PROBABILITIES_NAME)
        proto = onnx.load(path)
        # the tracer leaves the class axis symbolic after the crop; it is fixed, say so
        proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = num_classes
        kept = [p for p in proto.metadata_props if p.key not in metadata]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, path)
    finally:
        model.train(was_training)
