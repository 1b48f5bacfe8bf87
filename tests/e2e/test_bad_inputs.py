"""Issue 7's bad-input table: every case of tests/support/bad_input_cases.py through processing.run (in this
QGIS) and through scripts/qgis_process. A bad input must stop with its one-line message, exit non-zero
from qgis_process, leave no output or temporary file (an existing output stays byte-identical) and
leave the inputs untouched (no .aux.xml either). Positive controls must work and write correct output.

The fixtures are built once; the qgis_process runs start at once in two worker threads and overlap
with the in-process runs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import QgsProcessingException

from tests.support.bad_input_cases import CASES, DOCS, SPACED, UNWRITABLE, Case, render_markdown
from tests.support.helpers import (
    CLASS_GT,
    ORIGIN,
    QGIS_PROCESS,
    UTM,
    make_raster,
    make_vector,
    reproject,
    srs,
    standard_labels,
    tree_snapshot,
    utm_box,
    write_classes,
)

W, H = 64, 48
SPAWN_LOCK = threading.Lock()  # no qgis_process is started while this process's file-size limit is lowered
MARKER = "pwned"  # what the pickled payload of evil.pt would create in the inputs folder


class Evil:
    """Unpickling this would create a file: proof that a model file could run code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------ fixtures
def _float_raster(path: str, data: np.ndarray) -> None:
    """Float32 UTM raster without a nodata value: NaN alone must count as nodata."""
    ds = gdal.GetDriverByName("GTiff").Create(path, data.shape[2], data.shape[1], data.shape[0], gdal.GDT_Float32)
    ds.SetGeoTransform((ORIGIN[0], 2.0, 0, ORIGIN[1], 0, -2.0))
    ds.SetProjection(srs(UTM).ExportToWkt())
    for b in range(data.shape[0]):
        ds.GetRasterBand(b + 1).WriteArray(data[b])
    ds = None


NAN_HOLE = (slice(15, 23), slice(20, 30))  # rows, columns of the NaN hole in nan_hole.tif


def build_inputs(d: str) -> None:
    """Every input file of the table, small: rasters of 64 × 48 px, a 3-band model with 32-px chips."""
    import torch
    from torch import nn

    from geoseg.core.card import CARD_KEY, ModelCard
    from geoseg.core.checkpoint import FORMAT, save_model
    from geoseg.core.chips import ExportParams, export_chips
    from geoseg.models.export import export_onnx
    from geoseg.models.registry import build_model
    from tests.support.segment_fixtures import card

    byte = {"dtype": gdal.GDT_Byte, "nodata": None}
    make_raster(f"{d}/rgb.tif", W, H, bands=3, **byte)
    make_raster(f"{d}/one_band.tif", W, H, bands=1, **byte)
    make_raster(f"{d}/twelve.tif", W, H, bands=12, **byte)
    lon, lat = ogr.CreateGeometryFromWkt(reproject(f"POINT({ORIGIN[0]} {ORIGIN[1]})")).GetPoint_2D()
    make_raster(f"{d}/geo.tif", W, H, bands=3, pixel=0.00003, epsg=4326, origin=(lon, lat), **byte)
    make_raster(f"{d}/nodata.tif", W, H, bands=3, dtype=gdal.GDT_Byte, nodata=0, hole=(0, 0, W, H))
    _float_raster(f"{d}/nan_only.tif", np.full((3, H, W), np.nan, np.float32))
    data = np.random.default_rng(1).normal(120, 40, (3, H, W)).astype(np.float32)
    data[0][NAN_HOLE] = np.nan  # one band is enough to make a pixel nodata
    data[2, 5, 5] = np.nan
    _float_raster(f"{d}/nan_hole.tif", data)

    standard_labels(f"{d}/labels.gpkg")
    make_vector(f"{d}/empty.gpkg", [])
    make_vector(f"{d}/points.gpkg", [("POINT(500010 5299990)", 1)], geom_type=ogr.wkbPoint)
    make_vector(f"{d}/lines.gpkg", [("LINESTRING(500010 5299990,500090 5299950)", 1)], geom_type=ogr.wkbLineString)
    make_vector(f"{d}/whole.gpkg", [(utm_box(-5, -5, W + 5, H + 5), 1)])

    torch.manual_seed(0)
    good = card()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    export_onnx(net, 3, f"{d}/model.onnx", sample_size=32, metadata={CARD_KEY: json.dumps(good)})
    export_onnx(
        nn.Conv2d(3, 5, 1).eval(), 3, f"{d}/wrong_shape.onnx", sample_size=32, metadata={CARD_KEY: json.dumps(good)}
    )
    export_onnx(net, 3, f"{d}/no_card.onnx", sample_size=32)
    export_onnx(net, 3, f"{d}/card_not_json.onnx", sample_size=32, metadata={CARD_KEY: "{classes: oops"})
    export_onnx(
        net,
        3,
        f"{d}/card_wrong_types.onnx",
        sample_size=32,
        metadata={CARD_KEY: json.dumps({**good, "in_channels": "3"})},
    )
    unet = build_model("unet", 3, 3, base_width=4, depth=2)
    pt_card = {**good, "architecture": "unet", "architecture_options": unet.options}
    save_model(f"{d}/model.pt", unet.state_dict(), ModelCard.from_dict(pt_card))
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "card": json.dumps({**pt_card, "chip_size": "32"}),
            "state_dict": unet.state_dict(),
        },
        f"{d}/card_wrong_types.pt",
    )  # a foreign writer's card
    torch.save(
        {"format": FORMAT, "version": 1, "card": "{oops", "state_dict": unet.state_dict()}, f"{d}/card_not_json.pt"
    )
    torch.save(
        {"format": FORMAT, "card": json.dumps(pt_card), "payload": Evil(os.path.join(d, MARKER))}, f"{d}/evil.pt"
    )

    export_chips(
        ExportParams(
            f"{d}/rgb.tif", f"{d}/labels.gpkg", f"{d}/chips", class_field="cls", chip_size=32, validation_fraction=0.25
        )
    )
    shutil.copytree(f"{d}/chips", f"{d}/chips_missing")
    os.remove(os.path.join(d, "chips_missing", "images", sorted(os.listdir(f"{d}/chips/images"))[1]))
    shutil.copytree(f"{d}/chips", f"{d}/chips_nojson")
    os.remove(f"{d}/chips_nojson/dataset.json")
    export_chips(
        ExportParams(
            f"{d}/rgb.tif",
            f"{d}/whole.gpkg",
            f"{d}/chips_single",
            class_field="cls",
            chip_size=32,
            validation_fraction=0.25,
        )
    )

    ref = np.ones((40, 50), np.uint8)
    ref[:, 25:] = 3
    pred = ref.copy()
    pred[:10, :10] = 3
    write_classes(f"{d}/pred.tif", pred, 255)
    write_classes(f"{d}/ref.tif", ref, None)
    write_classes(f"{d}/ref_size.tif", np.ones((40, 51), np.uint8), None)
    shifted = (CLASS_GT[0] + 2.0, *CLASS_GT[1:])
    write_classes(f"{d}/ref_shift.tif", ref, None, gt=shifted)
    write_classes(f"{d}/ref_crs.tif", ref, None, epsg=32634)
    make_vector(f"{d}/ref.gpkg", [(utm_box(0, 0, 25, 40), 1), (utm_box(25, 0, 50, 20), 3)])

    build_issue13_inputs(d, net, good)
    build_issue14_inputs(d)
    build_issue16_inputs(d)
    build_issue17_inputs(d)
    build_issue13_rest(d, net, good)

    spaced = SPACED.format(**{"in": d})
    os.makedirs(spaced)
    for src, dst in (
        ("rgb.tif", "scène 1.tif"),
        ("labels.gpkg", "étiquettes 1.gpkg"),
        ("model.pt", "modèle 1.pt"),
        ("pred.tif", "prédiction 1.tif"),
        ("ref.tif", "référence 1.tif"),
    ):
        shutil.copy(f"{d}/{src}", f"{spaced}/{dst}")
    shutil.copytree(f"{d}/chips", f"{spaced}/chips ø")


def _chips_variant(
    d: str, name: str, dataset: Callable[[dict], object] | None = None, rows: Callable[[list[dict]], None] | None = None
) -> str:
    """A copy of {in}/chips with dataset.json and/or chips.csv rows changed."""
    folder = f"{d}/{name}"
    shutil.copytree(f"{d}/chips", folder)
    if dataset is not None:
        with open(f"{folder}/dataset.json", encoding="utf-8") as f:
            data = json.load(f)
        changed = dataset(data)
        with open(f"{folder}/dataset.json", "w", encoding="utf-8") as f:
            json.dump(data if changed is None else changed, f)
    if rows is not None:
        with open(f"{folder}/chips.csv", newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
        rows(table)
        with open(f"{folder}/chips.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    return folder


def _chip_file(path: str, bands: int, size: int, values: int | None = None) -> None:
    """Replace a chip file by a Byte raster with `bands` bands of `size` px (all `values`, else random)."""
    ds = gdal.GetDriverByName("GTiff").Create(path, size, size, bands, gdal.GDT_Byte)
    ds.SetGeoTransform(CLASS_GT)
    ds.SetProjection(srs(UTM).ExportToWkt())
    rng = np.random.default_rng(0)
    for b in range(bands):
        ds.GetRasterBand(b + 1).WriteArray(
            np.full((size, size), values, np.uint8)
            if values is not None
            else rng.integers(0, 255, (size, size), dtype=np.uint8)
        )
    ds = None


def _edit_class(i: int, **changes: object) -> Callable[[dict], None]:
    return lambda data: data["classes"][i].update(changes)


def _norm(key: str, values: list) -> Callable[[dict], None]:
    return lambda data: data["normalization"].update({key: values})


def build_issue17_inputs(d: str) -> None:
    """Issue 17 (resampling): a raster without a CRS (the model card has one)."""
    make_raster(f"{d}/nocrs.tif", W, H, bands=3, dtype=gdal.GDT_Byte, nodata=None, epsg=None)


def build_issue16_inputs(d: str) -> None:
    """Issue 16: label rasters (float, a value of 300, two bands), a folder that is not a chips folder,
    a UInt16 scene, labels with a class the chips folder lacks, a far area of interest."""

    def labels(name: str, dtype: int, bands: int = 1, value: int | float = 1) -> None:
        ds = gdal.GetDriverByName("GTiff").Create(f"{d}/{name}", W, H, bands, dtype)
        ds.SetGeoTransform(CLASS_GT)
        ds.SetProjection(srs(UTM).ExportToWkt())
        for b in range(bands):
            a = np.ones((H, W)) * (b + 1)
            a[20, 30] = value
            ds.GetRasterBand(b + 1).WriteArray(a)
        ds = None

    labels("lab_ok.tif", gdal.GDT_Byte)
    labels("lab_float.tif", gdal.GDT_Float32, value=1.5)
    labels("lab_300.tif", gdal.GDT_UInt16, value=300)
    labels("lab_two.tif", gdal.GDT_Byte, bands=2)
    make_raster(f"{d}/rgb16.tif", W, H, bands=3, dtype=gdal.GDT_UInt16, nodata=None)
    make_vector(f"{d}/labels7.gpkg", [(utm_box(0, 0, 30, 30), 7)])
    make_vector(f"{d}/aoi_far.gpkg", [(utm_box(5000, 5000, 5100, 5100), 1)])
    os.makedirs(f"{d}/not_chips")
    with open(f"{d}/not_chips/notes.txt", "w") as f:
        f.write("mine")


def build_issue14_inputs(d: str) -> None:
    """Issue 14: Deepness-format and bare ONNX models, an RGBA orthophoto, CARD files."""
    from tests.support.deepness_models import CLASSES, deepness_model, rgba_raster

    rgba_raster(f"{d}/rgba.tif", 64, 48)
    deepness_model(f"{d}/deepness.onnx", size=32, outputs=2)
    deepness_model(f"{d}/bare.onnx", "logits", size=None, meta={})
    deepness_model(f"{d}/dn_names_not_json.onnx", meta={"model_type": "Segmentor", "class_names": b"{building"})
    deepness_model(f"{d}/dn_names_list.onnx", meta={"model_type": "Segmentor", "class_names": ["a", "b", "c"]})
    deepness_model(f"{d}/dn_detector.onnx", meta={"model_type": "Detector", "class_names": CLASSES})
    deepness_model(
        f"{d}/dn_std_text.onnx",
        meta={"class_names": CLASSES, "standardization_mean": [0.5] * 3, "standardization_std": "wide"},
    )
    with open(f"{d}/card_bad.json", "w") as f:
        json.dump({"classes": [], "bands": [1, 2, 3]}, f)
    with open(f"{d}/card_good.json", "w") as f:
        classes = [{"value": i, "name": f"c{i}", "color": f"#00000{i}"} for i in range(3)]
        json.dump(
            {
                "classes": classes,
                "bands": [1, 2, 3],
                "in_channels": 3,
                "chip_size": 32,
                "normalization": {"mean": [127.0] * 3, "std": [60.0] * 3},
            },
            f,
        )


def build_issue13_inputs(d: str, net, good: dict) -> None:
    """Issue 13's inputs: broken chips folders, a NaN model, a multi-band reference, a UInt16 prediction."""
    from torch import nn

    from geoseg.core.card import CARD_KEY
    from geoseg.models.export import export_onnx

    first = sorted(os.listdir(f"{d}/chips/images"))[0]
    _chips_variant(d, "chips_json_list", dataset=lambda data: [data])
    _chips_variant(d, "chips_no_classes", dataset=lambda data: data.pop("classes") and None)
    _chips_variant(d, "chips_class_300", dataset=_edit_class(1, value=300))
    _chips_variant(d, "chips_dup_class", dataset=_edit_class(1, value=0))
    _chips_variant(d, "chips_colour_red", dataset=_edit_class(1, color="red"))
    _chips_variant(d, "chips_empty_name", dataset=_edit_class(1, name=""))
    _chips_variant(
        d,
        "chips_in_channels",
        dataset=lambda data: data.update(
            in_channels=4, bands=[1, 2, 3, 4], normalization={"mean": [100.0] * 4, "std": [30.0] * 4}
        ),
    )
    _chips_variant(d, "chips_norm_length", dataset=_norm("mean", [100.0, 100.0]))
    _chips_variant(d, "chips_std_zero", dataset=_norm("std", [30.0, 0.0, 30.0]))
    _chips_variant(d, "chips_std_nan", dataset=_norm("std", [float("nan"), 30.0, 30.0]))
    folder = _chips_variant(d, "chips_mixed_sizes")
    _chip_file(f"{folder}/images/{first}", 3, 16)
    _chip_file(f"{folder}/masks/{first}", 1, 16, 0)
    folder = _chips_variant(d, "chips_not_raster")
    with open(f"{folder}/images/{first}", "w") as f:
        f.write("not a raster\n")
    _chip_file(f"{_chips_variant(d, 'chips_two_bands')}/images/{first}", 2, 32)
    _chip_file(f"{_chips_variant(d, 'chips_mask_bands')}/masks/{first}", 2, 32, 0)
    _chip_file(f"{_chips_variant(d, 'chips_mask_value')}/masks/{first}", 1, 32, 9)

    def escape(table: list[dict]) -> None:
        table[0]["image"] = "../../../../etc/passwd"

    def absolute(table: list[dict]) -> None:
        table[1]["mask"] = os.path.abspath(f"{d}/chips/masks/{first}")

    _chips_variant(d, "chips_escape", rows=escape)
    _chips_variant(d, "chips_absolute", rows=absolute)
    folder = _chips_variant(d, "chips_symlink")
    os.remove(f"{folder}/images/{first}")
    os.symlink(os.path.abspath(f"{d}/rgb.tif"), f"{folder}/images/{first}")

    class NaNModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * float("nan")

    export_onnx(NaNModel().eval(), 3, f"{d}/nan_model.onnx", sample_size=32, metadata={CARD_KEY: json.dumps(good)})

    ds = gdal.GetDriverByName("GTiff").Create(f"{d}/ref_3bands.tif", 50, 40, 3, gdal.GDT_Byte)
    ds.SetGeoTransform(CLASS_GT)
    ds.SetProjection(srs(UTM).ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(np.ones((40, 50), np.uint8))
    ds = None
    pred = np.ones((40, 50), np.uint16)
    pred[:, 25:] = 3
    pred[30:, :10] = 300  # 100 pixels of a value the reference never holds (reference class 1 there)
    ds = gdal.GetDriverByName("GTiff").Create(f"{d}/pred_300.tif", 50, 40, 1, gdal.GDT_UInt16)
    ds.SetGeoTransform(CLASS_GT)
    ds.SetProjection(srs(UTM).ExportToWkt())
    ds.GetRasterBand(1).WriteArray(pred)
    ds = None


def build_issue13_rest(d: str, net, good: dict) -> None:
    """VRTs whose source is gone, encoder weights, dataset.json fields no card can hold, a fixed-size model."""
    import onnx
    import torch

    from geoseg.core.card import CARD_KEY

    for vrt, src in (("missing_source.vrt", "rgb.tif"), ("missing_pred.vrt", "pred.tif")):
        gone = f"{d}/gone_{src}"
        shutil.copy(f"{d}/{src}", gone)
        gdal.BuildVRT(f"{d}/{vrt}", [gone])
        os.remove(gone)
    torch.save({"conv1.weight": torch.zeros(1), "payload": Evil(os.path.join(d, MARKER))}, f"{d}/evil_weights.pth")
    _chips_variant(d, "chips_card_background", dataset=lambda data: data.update(background=300))
    _chips_variant(d, "chips_card_pixel_size", dataset=lambda data: data.update(pixel_size=[-2.0, 2.0]))
    _chips_variant(d, "chips_card_crs", dataset=lambda data: data.update(crs="EPSG:32633"))
    _chips_variant(d, "chips_card_bands", dataset=lambda data: data.update(bands=[0, 1, 2]))
    path = f"{d}/fixed32.onnx"  # exported for [1, 3, 32, 32] only (no dynamic axes), as some foreign models are
    torch.onnx.export(
        net, (torch.zeros(1, 3, 32, 32),), path, input_names=["input"], output_names=["logits"], dynamo=False
    )
    proto = onnx.load(path)
    proto.metadata_props.add(key=CARD_KEY, value=json.dumps(good))
    onnx.save(proto, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("bad_inputs"))
    os.makedirs(f"{root}/inputs")
    build_inputs(f"{root}/inputs")
    return root


# ------------------------------------------------------------------------------------------ running
def fill(value: object, inputs: str, out: str) -> object:
    return value.replace("{in}", inputs).replace("{out}", out) if isinstance(value, str) else value


def contents(folder: str) -> dict[str, str]:
    """Every file below `folder`, hidden ones included, with a digest of its bytes."""
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@dataclass
class Run:
    """One case run one way: what it said, and the folders before and after."""

    error: str | None  # the message (None: it succeeded)
    returncode: int | None  # qgis_process only
    out: str
    params: dict[str, object]
    out_before: dict[str, str]
    out_after: dict[str, str]
    inputs_before: dict
    inputs_after: dict
    results: dict | None = None  # processing.run's outputs


def prepare(case: Case, root: str, way: str) -> tuple[str, str, dict[str, object]]:
    inputs, out = f"{root}/inputs", f"{root}/{way}/{case.id}"
    os.makedirs(out)
    for rel, text in case.existing.items():
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        with open(os.path.join(out, rel), "w") as f:
            f.write(text)
    return inputs, out, {k: fill(v, inputs, out) for k, v in case.params.items()}


FSIZE_CHILD = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit("
    "resource.RLIMIT_FSIZE)[1])); os.execv(sys.argv[2], sys.argv[2:])"
)


def run_qgis_process(case: Case, root: str) -> Run:
    """scripts/qgis_process with the case's parameters (a full disk: a file-size limit set in the child)."""
    inputs, out, params = prepare(case, root, "qgis_process")
    args = [QGIS_PROCESS, "run", f"geoseg:{case.alg}", "--", *[f"{k}={v}" for k, v in params.items()]]
    if case.fsize:
        args = [sys.executable, "-c", FSIZE_CHILD, str(case.fsize), *args]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", GDAL_PAM_ENABLED="NO")
    out_before, inputs_before = contents(out), tree_snapshot(inputs)
    with SPAWN_LOCK:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate(timeout=600)
    text = stdout + stderr
    return Run(
        None if proc.returncode == 0 else text,
        proc.returncode,
        out,
        params,
        out_before,
        contents(out),
        inputs_before,
        tree_snapshot(inputs),
    )


@contextmanager
def file_size_limit(limit: int | None) -> Iterator[None]:
    """A simulated full disk for this process: writes past `limit` bytes fail with EFBIG."""
    if limit is None:
        yield
        return
    with SPAWN_LOCK:
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, handler)


def run_processing(case: Case, root: str) -> Run:
    import processing

    inputs, out, params = prepare(case, root, "processing")
    out_before, inputs_before = contents(out), tree_snapshot(inputs)
    error, results = None, None
    try:
        with file_size_limit(case.fsize):
            results = processing.run(f"geoseg:{case.alg}", params)
    except QgsProcessingException as e:
        error = str(e)
    return Run(error, None, out, params, out_before, contents(out), inputs_before, tree_snapshot(inputs), results)


@pytest.fixture(scope="module")
def qgis_process_runs(root, request) -> Iterator[dict[str, Future]]:
    """The selected cases through qgis_process, two at a time, started as soon as the inputs exist
    (test_processing_run asks for this fixture too, so they overlap with the in-process runs)."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_qgis_process"
    }
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {c.id: pool.submit(run_qgis_process, c, root) for c in CASES if c.id in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------ checks
def check_export_nan_hole(out: str, inputs: str) -> None:
    chips = os.path.join(out, "chips")
    norm = json.load(open(os.path.join(chips, "dataset.json")))["normalization"]
    assert all(np.isfinite(norm["mean"])) and all(np.isfinite(norm["std"]))
    src = gdal.Open(f"{inputs}/nan_hole.tif").ReadAsArray()
    with open(os.path.join(chips, "chips.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for r in rows:
        x, y = int(r["xoff"]), int(r["yoff"])
        mask = gdal.Open(os.path.join(chips, r["mask"])).ReadAsArray()
        nan = np.isnan(src[:, y : y + 32, x : x + 32]).any(axis=0)
        np.testing.assert_array_equal(mask == 255, nan)


def check_export_degree(out: str, inputs: str) -> None:
    images = os.path.join(out, "chips", "images")
    chip = gdal.Open(os.path.join(images, sorted(os.listdir(images))[0]))
    assert chip.GetSpatialRef().IsGeographic() and chip.GetSpatialRef().GetAuthorityCode(None) == "4326"


def check_export_spaces(out: str, inputs: str) -> None:
    chips = os.path.join(out, "mes chips ø")
    with open(os.path.join(chips, "chips.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(os.path.isfile(os.path.join(chips, r["image"])) for r in rows)


def check_train_spaces(out: str, inputs: str) -> None:
    assert sorted(os.listdir(out)) == [
        "modèle ø 1.last.pt",
        "modèle ø 1.metrics.csv",
        "modèle ø 1.onnx",
        "modèle ø 1.pt",
    ]


def check_segment_nan_hole(out: str, inputs: str) -> None:
    src = gdal.Open(f"{inputs}/nan_hole.tif").ReadAsArray()
    nan = np.isnan(src).any(axis=0)
    classes = gdal.Open(os.path.join(out, "classes.tif")).ReadAsArray()
    np.testing.assert_array_equal(classes == 255, nan)
    assert set(np.unique(classes[~nan])) <= {0, 2, 7}
    probs = gdal.Open(os.path.join(out, "p.tif")).ReadAsArray()
    assert np.isfinite(probs).all() and (probs[:, nan] == -1).all()  # NaN never spreads to its neighbours
    np.testing.assert_allclose(probs[:, ~nan].sum(axis=0), 1, atol=1e-5)


def check_segment_degree(out: str, inputs: str) -> None:
    """Issue 17: read at 2 m in UTM, written back on the degree grid (a thin edge may be nodata)."""
    src, ds = gdal.Open(f"{inputs}/geo.tif"), gdal.Open(os.path.join(out, "classes.tif"))
    assert (ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform()) == (
        src.RasterXSize,
        src.RasterYSize,
        src.GetGeoTransform(),
    )
    classes = ds.ReadAsArray()
    assert set(np.unique(classes)) <= {0, 2, 7, 255} and (classes != 255).mean() > 0.9


def check_segment_spaces(out: str, inputs: str) -> None:
    ds = gdal.Open(os.path.join(out, "carte ø", "classes é 1.tif"))
    assert (ds.RasterXSize, ds.RasterYSize) == (W, H)
    assert set(np.unique(ds.ReadAsArray())) <= {0, 2, 7}


def check_assess_spaces(out: str, inputs: str) -> None:
    folder = os.path.join(out, "rapport ø")
    assert sorted(os.listdir(folder)) == ["rapport é 1.html", "rapport é 1.json"]
    report = json.load(open(os.path.join(folder, "rapport é 1.json")))
    assert report["confusion_matrix"]["matrix"] == [[900, 100], [0, 1000]]


def check_exportonnx_spaces(out: str, inputs: str) -> None:
    import onnx

    from geoseg.core.card import CARD_KEY, ModelCard

    meta = {p.key: p.value for p in onnx.load(os.path.join(out, "modèle ø 1.onnx")).metadata_props}
    assert ModelCard.from_json(meta[CARD_KEY]).architecture == "unet"


def check_assess_value_300(out: str, inputs: str) -> None:
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["values"] == [1, 3, 300]
    assert report["predicted_values_not_in_reference"] == [{"value": 300, "pixels": 100}]
    assert report["confusion_matrix"]["matrix"] == [[900, 0, 100], [0, 1000, 0], [0, 0, 0]]
    assert report["overall_accuracy"] == pytest.approx(1900 / 2000)
    assert "value 300: 100 pixels" in open(os.path.join(out, "report.html"), encoding="utf-8").read()


def check_exportonnx_missing_folder(out: str, inputs: str) -> None:
    import onnx

    assert sorted(os.listdir(os.path.join(out, "new", "folder"))) == ["m.onnx"]
    onnx.checker.check_model(onnx.load(os.path.join(out, "new", "folder", "m.onnx")))


def check_segment_stale_partial(out: str, inputs: str) -> None:
    assert sorted(os.listdir(out)) == ["classes.tif", "classes.tif.aux.xml"]


def check_export_stale_partial(out: str, inputs: str) -> None:
    assert sorted(os.listdir(out)) == ["chips"]
    assert os.path.isfile(os.path.join(out, "chips", "dataset.json"))


def check_segment_bare_card(out: str, inputs: str) -> None:
    """Issue 14: a bare ONNX model runs with CARD=card.json; its classes name the map's values."""
    from geoseg.core.raster import category_names

    classes = gdal.Open(f"{out}/classes.tif").ReadAsArray()
    assert classes.shape == (48, 64) and set(np.unique(classes)) <= {0, 1, 2, 255}
    assert category_names(f"{out}/classes.tif").get(1) == "c1"


def check_segment_polygons(out: str, inputs: str) -> None:
    """Issue 17: OUTPUT_VECTOR rasterised back equals the class map; SIEVE 4 left no smaller region."""
    from tests.support.regions import rasterize, regions

    classes = gdal.Open(f"{out}/classes.tif").ReadAsArray()
    np.testing.assert_array_equal(rasterize(f"{out}/regions.gpkg", f"{out}/classes.tif"), classes)
    sizes = regions(classes)
    assert sizes and min(n for _, n in sizes) >= 4
    ds = ogr.Open(f"{out}/regions.gpkg")  # the dataset must outlive its layer
    assert ds.GetLayer("regions").GetFeatureCount() == len(sizes)


CHECKS: dict[str, Callable[[str, str], None]] = {
    "segment-polygons-sieve-tta": check_segment_polygons,
    "segment-bare-onnx-card": check_segment_bare_card,
    "exportonnx-missing-folder": check_exportonnx_missing_folder,
    "segment-stale-partial": check_segment_stale_partial,
    "export-stale-partial": check_export_stale_partial,
    "assess-value-300": check_assess_value_300,
    "export-nan-hole": check_export_nan_hole,
    "export-degree-raster": check_export_degree,
    "segment-degree-raster": check_segment_degree,
    "export-spaces": check_export_spaces,
    "train-spaces": check_train_spaces,
    "segment-nan-hole": check_segment_nan_hole,
    "segment-spaces": check_segment_spaces,
    "assess-spaces": check_assess_spaces,
    "exportonnx-spaces": check_exportonnx_spaces,
}


def check(case: Case, run: Run, root: str) -> None:
    inputs = f"{root}/inputs"
    assert run.inputs_after == run.inputs_before, "the inputs were changed"
    assert not [f for f in run.inputs_after if f.endswith(".aux.xml")]
    assert not os.path.exists(os.path.join(inputs, MARKER)), "the pickled payload ran"
    if case.ok:
        assert run.error is None, run.error[-3000:]
        CHECKS[case.id](run.out, inputs)
        return
    assert run.error is not None, "the bad input was accepted"
    assert case.message in run.error, run.error[-3000:]
    assert "Traceback" not in run.error, run.error[-3000:]
    if run.returncode is not None:
        assert run.returncode != 0
    assert run.out_after == run.out_before, "output (or a temporary file) was left behind, or an existing one changed"
    assert not os.path.exists(UNWRITABLE)


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_processing_run(geoseg_provider, root, qgis_process_runs, case):
    check(case, run_processing(case, root), root)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_qgis_process(root, qgis_process_runs, case):
    check(case, qgis_process_runs[case.id].result(), root)


def test_table_covers_the_issue():
    bad = [c for c in CASES if not c.ok]
    assert len(bad) >= 28 and {c.alg for c in CASES} == {"exportchips", "train", "segment", "assess", "exportonnx"}
    assert set(CHECKS) == {c.id for c in CASES if c.ok}
    # issue 13, families 1-3: the dataset validator, path containment, finite outputs, assess, memory
    issue13 = {
        "train-dataset-json-list",
        "train-dataset-no-classes",
        "train-class-value-300",
        "train-duplicate-class-values",
        "train-class-colour-red",
        "train-in-channels-mismatch",
        "train-normalization-length",
        "train-constant-band",
        "train-mixed-chip-sizes",
        "train-chip-not-raster",
        "train-chip-band-count",
        "train-mask-two-bands",
        "train-mask-unlisted-class",
        "train-path-escapes",
        "train-path-absolute",
        "train-path-symlink",
        "train-huge-model",
        "export-chip-size-huge",
        "segment-nan-model",
        "assess-multiband-reference",
        "assess-value-300",
    }
    assert issue13 <= {c.id for c in CASES}
    # issue 13, the rest: VRT sources, encoder weights, exportonnx folders, the card before the first
    # epoch (family 4), what killed runs leave (family 5), weak messages
    rest = {
        "export-vrt-missing-source",
        "segment-vrt-missing-source",
        "assess-vrt-missing-source",
        "train-encoder-weights-missing",
        "train-encoder-weights-pickle-pt",
        "train-encoder-weights-raster",
        "exportonnx-missing-folder",
        "exportonnx-output-folder",
        "train-card-background-300",
        "train-card-pixel-size",
        "train-card-crs-text",
        "train-card-band-zero",
        "train-rerun-after-kill",
        "segment-stale-partial",
        "export-stale-partial",
        "export-chip-size-text",
        "train-learning-rate-text",
        "segment-chip-size-fixed-model",
        "segment-fixed-model-expected",
        "segment-model-is-folder",
        "exportonnx-model-is-folder",
    }
    assert rest <= {c.id for c in CASES}
    assert len(issue13 | rest) >= 30, "issue 13: the table grows by at least 30 rows"
    assert not [c for c in CASES if c.alg == "assess" and not c.ok and c.message.startswith(("INPUT", "LABELS"))]


def test_docs_table_is_current():
    """docs/bad_inputs.md is generated from the table: `.venv/bin/python tests/support/bad_input_cases.py`."""
    with open(DOCS, encoding="utf-8") as f:
        assert f.read() == render_markdown(), "stale: run .venv/bin/python tests/support/bad_input_cases.py"
