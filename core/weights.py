"""Pretrained ResNet encoder weights: the table of named weights, and their safe download.

`ENCODER_WEIGHTS` is empty (random initialisation), a name from `NAMED_WEIGHTS`, or the path of a
local `.pth` file (torchvision or timm/TorchGeo key layout), which always works, online or not.

A named weight is fetched on first use into the cache folder (`cache_dir`: the folder the caller
passes — the QGIS dialog passes one in the QGIS profile —, else `$GEOSEG_CACHE`, else
`~/.cache/geoseg`; files go in its `weights/` subfolder). The download is streamed to a hidden
partial file beside the target (`core.staging.staged_path`), with progress and cancel checked at
every chunk and a bounded socket timeout, and its sha256 is verified before the rename: a
mismatch, a dropped connection or a cancel keep nothing. A cached file is verified again at every
use. Offline, the message names the file, where to fetch it and where to put it.

The checksum: like `torch.hub.download_url_to_file(check_hash=True)`, the published file names
carry the first 8 hex digits of the file's sha256 (`resnet18-f37072fd.pth`); GeoSeg stores that
prefix (the full hashes are not published) and checks the file's sha256 starts with it. The
model card records the file's full sha256.

`GEOSEG_WEIGHTS_BASE_URL` (tests, mirrors, an offline network's file server) replaces every
address's folder: the file is fetched from `$GEOSEG_WEIGHTS_BASE_URL/<file name>`.
`GEOSEG_WEIGHTS_EXTRA` names a JSON file listing more named weights (objects with the fields of
`NamedWeights`; `sha256` may be the full hash), e.g. a site's own fine-tuned ResNets; they may not
reuse a built-in name.

Files are read with `torch.load(weights_only=True)` only (`models.resnet`): never unpickled.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields

from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .staging import staged_path

log = logging.getLogger("geoseg")

PARAM = "ENCODER_WEIGHTS"
CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per socket operation (connect, each read): a stalled server fails, it does not hang

_IMAGENET = "scale to 0–1, then ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225)"
_S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
_S2_SCALING = "Sentinel-2 L1C digital numbers / 10000"
_L_SCALING = "SSL4EO-L 8-bit values / 255"
_TORCHGEO_S2 = "https://hf.co/torchgeo"
_TORCHGEO_L = "https://hf.co/torchgeo/ssl4eo_landsat/resolve/1c88bb51b6e17a21dde5230738fa38b74bd74f76"


@dataclass(frozen=True)
class NamedWeights:
    """One published set of ResNet weights: where it is, how to check it, what input it expects."""

    name: str  # the ENCODER_WEIGHTS value
    encoder: str  # resnet18 | resnet34 | resnet50
    url: str
    sha256: str  # the published prefix of the file's sha256 (the hex digits in its name)
    bands: tuple[str, ...]  # the bands, in the order the first convolution expects them
    scaling: str  # the input scaling the weights were trained with
    licence: str
    source: str  # who trained them (and how)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    w.name: w
    for w in (
        NamedWeights(
            "resnet18_imagenet",
            "resnet18",
            "https://download.pytorch.org/models/resnet18-f37072fd.pth",
            "f37072fd",
            ("red", "green", "blue"),
            _IMAGENET,
            "BSD-3-Clause",
            "torchvision, ImageNet-1k (supervised, IMAGENET1K_V1)",
        ),
        NamedWeights(
            "resnet34_imagenet",
            "resnet34",
            "https://download.pytorch.org/models/resnet34-b627a593.pth",
            "b627a593",
            ("red", "green", "blue"),
            _IMAGENET,
            "BSD-3-Clause",
            "torchvision, ImageNet-1k (supervised, IMAGENET1K_V1)",
        ),
        NamedWeights(
            "resnet50_imagenet",
            "resnet50",
            "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            "0676ba61",
            ("red", "green", "blue"),
            _IMAGENET,
            "BSD-3-Clause",
            "torchvision, ImageNet-1k (supervised, IMAGENET1K_V1)",
        ),
        NamedWeights(
            "resnet18_sentinel2_all_moco",
            "resnet18",
            f"{_TORCHGEO_S2}/resnet18_sentinel2_all_moco/resolve/5b8cddc9a14f3844350b7f40b85bcd32aed75918/"
            "resnet18_sentinel2_all_moco-59bfdff9.pth",
            "59bfdff9",
            _S2_BANDS,
            _S2_SCALING,
            "CC-BY-4.0",
            "TorchGeo / SSL4EO-S12, Sentinel-2 L1C, 13 bands (self-supervised, MoCo v3)",
        ),
        NamedWeights(
            "resnet50_sentinel2_all_moco",
            "resnet50",
            f"{_TORCHGEO_S2}/resnet50_sentinel2_all_moco/resolve/da4f3c9dbe09272eb902f3b37f46635fa4726879/"
            "resnet50_sentinel2_all_moco-df8b932e.pth",
            "df8b932e",
            _S2_BANDS,
            _S2_SCALING,
            "CC-BY-4.0",
            "TorchGeo / SSL4EO-S12, Sentinel-2 L1C, 13 bands (self-supervised, MoCo v3)",
        ),
        NamedWeights(
            "resnet50_sentinel2_all_dino",
            "resnet50",
            f"{_TORCHGEO_S2}/resnet50_sentinel2_all_dino/resolve/d7f14bf5530d70ac69d763e58e77e44dbecfec7c/"
            "resnet50_sentinel2_all_dino-d6c330e9.pth",
            "d6c330e9",
            _S2_BANDS,
            _S2_SCALING,
            "CC-BY-4.0",
            "TorchGeo / SSL4EO-S12, Sentinel-2 L1C, 13 bands (self-supervised, DINO)",
        ),
        NamedWeights(
            "resnet18_landsat_oli_sr_moco",
            "resnet18",
            f"{_TORCHGEO_L}/resnet18_landsat_oli_sr_moco-660e82ed.pth",
            "660e82ed",
            ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"),
            _L_SCALING,
            "CC0-1.0",
            "TorchGeo / SSL4EO-L, Landsat 8-9 OLI surface reflectance, 7 bands (self-supervised, MoCo v2)",
        ),
        NamedWeights(
            "resnet50_landsat_oli_sr_moco",
            "resnet50",
            f"{_TORCHGEO_L}/resnet50_landsat_oli_sr_moco-ff580dad.pth",
            "ff580dad",
            ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"),
            _L_SCALING,
            "CC0-1.0",
            "TorchGeo / SSL4EO-L, Landsat 8-9 OLI surface reflectance, 7 bands (self-supervised, MoCo v2)",
        ),
        NamedWeights(
            "resnet18_landsat_oli_tirs_toa_moco",
            "resnet18",
            f"{_TORCHGEO_L}/resnet18_landsat_oli_tirs_toa_moco-a3002f51.pth",
            "a3002f51",
            ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
            _L_SCALING,
            "CC0-1.0",
            "TorchGeo / SSL4EO-L, Landsat 8-9 OLI/TIRS top of atmosphere, 11 bands (self-supervised, MoCo v2)",
        ),
        NamedWeights(
            "resnet50_landsat_oli_tirs_toa_moco",
            "resnet50",
            f"{_TORCHGEO_L}/resnet50_landsat_oli_tirs_toa_moco-de7f5e0f.pth",
            "de7f5e0f",
            ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
            _L_SCALING,
            "CC0-1.0",
            "TorchGeo / SSL4EO-L, Landsat 8-9 OLI/TIRS top of atmosphere, 11 bands (self-supervised, MoCo v2)",
        ),
    )
}


def named_weights() -> dict[str, NamedWeights]:
    """NAMED_WEIGHTS and the entries of $GEOSEG_WEIGHTS_EXTRA (GeoSegError when that file is wrong)."""
    extra = os.environ.get("GEOSEG_WEIGHTS_EXTRA", "").strip()
    if not extra:
        return dict(NAMED_WEIGHTS)
    keys = [f.name for f in fields(NamedWeights)]
    try:
        with open(extra, encoding="utf-8") as f:
            entries = [NamedWeights(**{k: e[k] for k in keys}) for e in json.load(f)]
        for w in entries:
            if not (
                isinstance(w.sha256, str) and len(w.sha256) >= 8 and w.encoder in ("resnet18", "resnet34", "resnet50")
            ):
                raise ValueError(f"entry {w.name}: a ResNet encoder and a sha256 of 8 or more hex digits")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise GeoSegError(
            f"{PARAM}: GEOSEG_WEIGHTS_EXTRA {extra} is not a list of weights ({exc}).", param=PARAM
        ) from None
    table = dict(NAMED_WEIGHTS)
    for w in entries:
        if w.name in table:
            raise GeoSegError(f"{PARAM}: GEOSEG_WEIGHTS_EXTRA may not redefine {w.name}.", param=PARAM)
        table[w.name] = NamedWeights(**{**{k: getattr(w, k) for k in keys}, "bands": tuple(w.bands)})
    return table


@dataclass(frozen=True)
class ResolvedWeights:
    """A local weights file ready to load, and what the card records about it."""

    path: str
    name: str  # the table's name, or the file's name for a local file
    sha256: str  # the file's full sha256
    named: NamedWeights | None  # None: a local file


def cache_dir(explicit: str | None = None) -> str:
    """Where named weights are kept: `explicit` (the dialog's QGIS profile folder), else
    $GEOSEG_CACHE, else ~/.cache/geoseg; the files go in its `weights` subfolder."""
    base = explicit or os.environ.get("GEOSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "geoseg")
    return os.path.join(base, "weights")


def download_url(w: NamedWeights) -> str:
    """The address to fetch `w` from: its own, or $GEOSEG_WEIGHTS_BASE_URL/<file name>."""
    base = os.environ.get("GEOSEG_WEIGHTS_BASE_URL", "").strip()
    return f"{base.rstrip('/')}/{w.file_name}" if base else w.url


def file_sha256(path: str, cancelled: IsCancelled = lambda: False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if cancelled():
                raise Cancelled("Cancelled while checking the encoder weights; nothing was written.")
            digest.update(chunk)
    return digest.hexdigest()


def _matches(digest: str, expected: str) -> bool:
    return bool(expected) and digest.startswith(expected.lower())


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith((".pth", ".pt", ".bin"))


def check_weights_spec(spec: str, encoder: str) -> NamedWeights | None:
    """Cheap check of ENCODER_WEIGHTS for `encoder` (no download, no hashing): the named weights, or
    None for a local file; GeoSegError for a folder, a missing file, an unknown name, another ResNet."""
    spec = spec.strip()
    if os.path.isdir(spec):
        raise GeoSegError(f"{PARAM}: {spec} is a folder; give a .pth weights file or a weight name.", param=PARAM)
    if os.path.isfile(spec):
        return None
    table = named_weights()
    named = table.get(spec)
    if named is None:
        if _looks_like_path(spec):
            raise GeoSegError(f"{PARAM}: file not found: {spec}.", param=PARAM)
        raise GeoSegError(
            f"{PARAM}: unknown weight name '{spec}'; give the path of a .pth file or one of: {', '.join(table)}.",
            param=PARAM,
        )
    if named.encoder != encoder:
        raise GeoSegError(
            f"{PARAM}: {named.name} are {named.encoder} weights, but the encoder is {encoder}; set ENCODER to "
            f"{named.encoder} or choose {encoder} weights.",
            param=PARAM,
        )
    return named


def resolve_weights(
    spec: str,
    encoder: str,
    cache: str | None = None,
    progress: Progress = lambda f: None,
    cancelled: IsCancelled = lambda: False,
) -> ResolvedWeights:
    """ENCODER_WEIGHTS → a verified local file for `encoder`; downloads a named weight on first use.

    GeoSegError (param ENCODER_WEIGHTS) for an unknown name, weights for another ResNet, a missing
    file, a checksum mismatch, a failed or interrupted download (saying what to fetch by hand)."""
    spec = spec.strip()
    named = check_weights_spec(spec, encoder)
    if named is None:
        return ResolvedWeights(os.path.abspath(spec), os.path.basename(spec), file_sha256(spec, cancelled), None)
    target = os.path.join(cache_dir(cache), named.file_name)
    if os.path.isfile(target):
        digest = file_sha256(target, cancelled)
        if _matches(digest, named.sha256):
            return ResolvedWeights(target, named.name, digest, named)
        log.warning("%s in the cache does not have the published checksum; downloading it again.", target)
        os.remove(target)
    digest = download(named, target, progress, cancelled)
    return ResolvedWeights(target, named.name, digest, named)


def _by_hand(w: NamedWeights, target: str) -> str:
    return (
        f"Fetch {w.file_name} by hand from {w.url} and put it in {os.path.dirname(target)} "
        f"(or give the downloaded file's path as {PARAM})."
    )


def download(
    w: NamedWeights, target: str, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False
) -> str:
    """Stream `w` to `target` through a hidden partial file; verify its sha256 prefix; return the
    full sha256. Nothing is kept unless the whole file arrived and its checksum matches."""
    url = download_url(w)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise GeoSegError(f"{PARAM}: refusing to download {w.name} from {url} (only http and https).", param=PARAM)
    log.info("Downloading %s (%s) from %s into %s.", w.name, w.file_name, url, os.path.dirname(target))
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,
            staged_path(target, PARAM) as tmp,
        ):
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            with open(tmp, "wb") as f:
                while chunk := response.read(CHUNK):
                    if cancelled():
                        raise Cancelled(f"Download of {w.file_name} cancelled; nothing was kept.")
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if total:
                        progress(min(done / total, 1.0))
            if total and done != total:
                raise http.client.IncompleteRead(b"", total - done)
            if not _matches(digest.hexdigest(), w.sha256):
                raise GeoSegError(
                    f"{PARAM}: the downloaded {w.file_name} does not have the published checksum (sha256 "
                    f"{digest.hexdigest()[:16]}…, expected {w.sha256}…); it was refused and nothing was kept. "
                    + _by_hand(w, target),
                    param=PARAM,
                )
    except (GeoSegError, Cancelled):
        raise
    except urllib.error.HTTPError as e:
        raise GeoSegError(
            f"{PARAM}: downloading {w.file_name} from {url} failed (HTTP {e.code} {e.reason}). " + _by_hand(w, target),
            param=PARAM,
        ) from None
    except urllib.error.URLError as e:
        raise GeoSegError(
            f"{PARAM}: cannot reach {url} ({e.reason}); offline? " + _by_hand(w, target), param=PARAM
        ) from None
    except (http.client.HTTPException, OSError) as e:  # dropped connection, timeout, reset
        detail = type(e).__name__ if isinstance(e, http.client.IncompleteRead) else str(e) or type(e).__name__
        raise GeoSegError(
            f"{PARAM}: the download of {w.file_name} from {url} was interrupted ({detail}); nothing was kept. "
            + _by_hand(w, target),
            param=PARAM,
        ) from None
    progress(1.0)
    return digest.hexdigest()
