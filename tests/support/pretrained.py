"""Pretrained-encoder fixtures (issue 15): small ResNet weight files in the torchvision and timm
layouts, and a file server on 127.0.0.1 that tests start and stop (never the internet)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import torch

from geoseg.core.weights import NamedWeights
from geoseg.models.resnet import ResNetEncoder


# ---------------------------------------------------------------- weight files
def resnet_state(name: str, in_channels: int = 3, layout: str = "torchvision", seed: int = 0) -> dict:
    """A random ResNet state dict in torchvision's layout; `timm` adds `fc.*` as TorchGeo's files do."""
    torch.manual_seed(seed)
    enc = ResNetEncoder(name, in_channels, output_stride=32)
    for q in enc.parameters():
        q.data.normal_(0, 0.05)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    state.pop("layer1.0.bn1.num_batches_tracked")  # older torchvision files lack some: optional
    if layout == "timm":
        width = enc.out_channels
        state["fc.weight"] = torch.randn(1000, width)
        state["fc.bias"] = torch.zeros(1000)
    return state


def write_weights(path, name="resnet18", in_channels=3, layout="torchvision", seed=0) -> str:
    torch.save(resnet_state(name, in_channels, layout, seed), str(path))
    return str(path)


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------- local server
class Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    drop: ClassVar[set[str]] = set()  # names whose connection is closed half-way
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.hits.append(name)
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.drop else body)
        if name in self.drop:
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args) -> None:  # quiet
        pass


@contextlib.contextmanager
def file_server() -> Iterator[tuple[type[Handler], str]]:
    """(handler class, base URL) of a file server on 127.0.0.1, stopped on exit."""
    Handler.files, Handler.drop, Handler.hits = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Handler, f"http://127.0.0.1:{httpd.server_address[1]}/models"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def named_for(data: bytes, encoder: str = "resnet18", sha: str | None = None) -> NamedWeights:
    """A table entry for `data`, its checksum prefix in its file name as torch.hub's convention has it."""
    digest = hashlib.sha256(data).hexdigest()[:8] if sha is None else sha
    return NamedWeights(
        f"test_{encoder}", encoder, f"https://example.invalid/x/{encoder}-{digest}.pth", digest, ("r", "g", "b"),
        "0-1", "BSD-3-Clause", "test",
    )  # fmt: skip
