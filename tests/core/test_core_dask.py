"""Prediction on a real Dask cluster (a scheduler and 2 workers as subprocesses, tests/support/dask_cluster.py):
pixel-identical to the in-process run, with a worker SIGKILLed, resumed after a killed client,
cancelled, and refused clearly when the scheduler cannot be reached."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

from geoseg.core import distributed
from geoseg.core.card import CARD_KEY
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.predict import SegmentParams, segment
from geoseg.models.export import export_onnx
from tests.core.test_core_predict import card, conv_stack
from tests.support.dask_cluster import dask_cluster, free_port, kill_worker, wait_for_workers, wait_until, worker_pids
from tests.support.helpers import make_raster

__all__ = ["dask_cluster"]  # the fixture, imported for this module

W, H = 613, 257  # odd sizes; wider than 512 so that the maps get an overview level
HOLE = (100, 60, 37, 23)


def write_scene(root, name: str = "scene.tif") -> tuple[str, str]:
    """The odd-sized 3-band raster with its nodata hole, and a local conv model for it (also used by
    the qgis_process test)."""
    raster = str(root / name)
    make_raster(raster, W, H, bands=3, hole=HOLE)
    model = str(root / "conv.onnx")
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    return raster, model


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("dask-scene"))


def params(scene, folder, scheduler: str | None = None) -> SegmentParams:
    raster, model = scene
    return SegmentParams(
        raster,
        model,
        os.path.join(folder, "classes.tif"),
        os.path.join(folder, "probs.tif"),
        chip_size=32,
        stride_x=16,
        stride_y=16,
        crop=4,
        batch_size=4,
        device="cpu",
        scheduler=scheduler,
    )


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    """The in-process run."""
    folder = str(tmp_path_factory.mktemp("dask-ref"))
    segment(params(scene, folder))
    return folder


def assert_same_maps(got: str, ref: str) -> None:
    """Pixels, probabilities, CRS, geotransform, nodata, colour table, band names and overviews."""
    for name in ("classes.tif", "probs.tif"):
        a, b = gdal.Open(os.path.join(got, name)), gdal.Open(os.path.join(ref, name))
        assert (a.RasterXSize, a.RasterYSize, a.RasterCount) == (b.RasterXSize, b.RasterYSize, b.RasterCount)
        assert a.GetProjection() == b.GetProjection() and a.GetGeoTransform() == b.GetGeoTransform()
        np.testing.assert_array_equal(a.ReadAsArray(), b.ReadAsArray())
        for i in range(1, a.RasterCount + 1):
            ba, bb = a.GetRasterBand(i), b.GetRasterBand(i)
            assert ba.GetNoDataValue() == bb.GetNoDataValue() and ba.GetDescription() == bb.GetDescription()
            assert ba.DataType == bb.DataType and ba.GetBlockSize() == bb.GetBlockSize()
            assert ba.GetOverviewCount() == bb.GetOverviewCount() == 1
            np.testing.assert_array_equal(ba.GetOverview(0).ReadAsArray(), bb.GetOverview(0).ReadAsArray())
        if name == "classes.tif":
            ta, tb = a.GetRasterBand(1).GetColorTable(), b.GetRasterBand(1).GetColorTable()
            assert ta is not None and tb is not None and ta.GetCount() == tb.GetCount()
            assert [ta.GetColorEntry(i) for i in range(ta.GetCount())] == [
                tb.GetColorEntry(i) for i in range(tb.GetCount())
            ]
            x, y, w, h = HOLE
            assert (a.ReadAsArray()[y : y + h, x : x + w] == 255).all()
    assert sorted(os.listdir(got)) == ["classes.tif", "classes.tif.aux.xml", "probs.tif"]  # no parts left


def test_cluster_map_equals_in_process(scene, reference, dask_cluster, tmp_path):
    seen: list[float] = []
    r = segment(params(scene, str(tmp_path), dask_cluster.address), progress=seen.append)
    assert_same_maps(str(tmp_path), reference)
    assert r.backend == "onnxruntime" and r.batch_size == 4
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 8  # one step per part at least


def test_sigkilled_worker_still_gives_the_same_map(scene, reference, dask_cluster, tmp_path):
    """A worker process (not its nanny) SIGKILLed after the first part: the scheduler reruns its
    task elsewhere (or on the restarted worker) and the map is complete and identical."""
    pids = worker_pids(dask_cluster.address)
    killed: list[int] = []

    def progress(f: float) -> None:
        if 0 < f < 0.9 and not killed:
            kill_worker(pids[0])
            killed.append(pids[0])

    segment(params(scene, str(tmp_path), dask_cluster.address), progress=progress)
    assert killed
    assert_same_maps(str(tmp_path), reference)
    wait_for_workers(dask_cluster.address, 2)
    wait_until(lambda: pids[0] not in worker_pids(dask_cluster.address), what="the nanny's new worker")


CLIENT = r"""
import sys, time
from geoseg.core.predict import SegmentParams, segment
p = SegmentParams(*sys.argv[1:5], chip_size=32, stride_x=16, stride_y=16, crop=4, batch_size=4, device="cpu",
                  scheduler=sys.argv[5])
segment(p, progress=lambda f: time.sleep(0.4) if 0 < f < 0.9 else None)  # slow client: killed midway
"""


def test_resume_after_a_killed_client_skips_finished_parts(scene, reference, dask_cluster, tmp_path, caplog):
    p = params(scene, str(tmp_path), dask_cluster.address)
    folder = os.path.join(str(tmp_path), ".classes.tif.parts")
    manifest = os.path.join(folder, distributed.MANIFEST)

    def finished() -> dict:
        try:
            with open(manifest, encoding="utf-8") as f:
                return json.load(f)["done"]
        except (OSError, ValueError):
            return {}

    args = [p.input_path, p.model_path, p.output_path, p.probabilities_path, dask_cluster.address]
    client = subprocess.Popen([sys.executable, "-c", CLIENT, *args], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(finished()) >= 2 or client.poll() is not None, 60, "two finished parts")
        client.send_signal(signal.SIGKILL)
    finally:
        client.wait()
    done = finished()
    with open(manifest, encoding="utf-8") as f:
        total = len(json.load(f)["blocks"])
    assert 2 <= len(done) < total, "the client finished before it was killed"
    stamps = {i: os.stat(distributed.part_paths(folder, int(i))[0]).st_mtime_ns for i in done}
    assert not os.path.exists(p.output_path)
    untouched: list[bool] = []

    def progress(f: float) -> None:  # first call: after submitting, before any new part is recorded
        if not untouched:
            untouched.append(
                all(os.stat(distributed.part_paths(folder, int(i))[0]).st_mtime_ns == t for i, t in stamps.items())
            )
            assert f >= 0.9 * len(done) / total - 1e-9  # the finished parts count as done at once

    with caplog.at_level(logging.INFO, logger="geoseg"):
        segment(p, progress=progress)
    assert untouched == [True]
    assert f"Resuming: {len(done)} of {total} parts were finished by an earlier run." in caplog.text
    assert_same_maps(str(tmp_path), reference)


def test_other_inputs_discard_old_parts(scene, dask_cluster, tmp_path, caplog):
    """A parts folder whose fingerprint is not the run's is discarded, not reused."""
    p = params(scene, str(tmp_path), dask_cluster.address)
    stale = os.path.join(str(tmp_path), ".classes.tif.parts")
    os.makedirs(stale)
    with open(os.path.join(stale, distributed.MANIFEST), "w") as f:
        json.dump({"fingerprint": "other", "blocks": [[0, 99]], "done": {"0": {}}}, f)
    with open(distributed.part_paths(stale, 0)[0], "w") as f:
        f.write("not a part")
    with caplog.at_level(logging.INFO, logger="geoseg"):
        segment(dataclasses.replace(p, probabilities_path=None))
    assert "Discarding the parts of an earlier run" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["classes.tif", "classes.tif.aux.xml"]


def test_resampled_run_written_back_equals_in_process(scene, dask_cluster, tmp_path):
    """Read through a warped VRT (PIXEL_SIZE 3 m on the 2 m raster) and written back onto the input's
    grid: the workers read the warped grid themselves, the client writes back as in-process."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    base = dataclasses.replace(params(scene, str(local)), resolution="size", pixel_size=3.0, probabilities_path=None)
    segment(base)
    segment(dataclasses.replace(base, output_path=str(remote / "classes.tif"), scheduler=dask_cluster.address))
    a, b = gdal.Open(str(local / "classes.tif")), gdal.Open(str(remote / "classes.tif"))
    assert (a.RasterXSize, a.RasterYSize) == (W, H) and a.GetGeoTransform() == b.GetGeoTransform()
    np.testing.assert_array_equal(a.ReadAsArray(), b.ReadAsArray())
    assert sorted(os.listdir(remote)) == ["classes.tif", "classes.tif.aux.xml"]


def test_cancel_leaves_no_parts_and_no_outputs(scene, dask_cluster, tmp_path):
    seen: list[float] = []
    with pytest.raises(Cancelled):
        segment(
            params(scene, str(tmp_path), dask_cluster.address),
            progress=seen.append,
            cancelled=lambda: any(0 < f < 0.9 for f in seen),
        )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("env", [False, True])
def test_unreachable_scheduler_is_refused_clearly(scene, tmp_path, monkeypatch, env):
    """SCHEDULER (or $DASK_SCHEDULER_ADDRESS, honoured when SCHEDULER is empty) where nothing listens."""
    address = f"tcp://127.0.0.1:{free_port()}"
    if env:
        monkeypatch.setenv(distributed.ENV, address)
    with pytest.raises(GeoSegError) as e:
        segment(params(scene, str(tmp_path / "out"), None if env else address))
    assert str(e.value).startswith(f"SCHEDULER: could not connect to {address}: ")
    assert "python -m geoseg.core cluster" in str(e.value) and e.value.param == "SCHEDULER"
    assert os.listdir(tmp_path) == []


def test_scheduler_file(scene, tmp_path, dask_cluster):
    """A scheduler file (the one `dask scheduler --scheduler-file` wrote) works as SCHEDULER; a file
    that is not one is refused."""
    p = dataclasses.replace(params(scene, str(tmp_path), dask_cluster.file), probabilities_path=None)
    segment(p)
    assert gdal.Open(p.output_path).RasterXSize == W
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(GeoSegError, match="is not a scheduler file written by `dask scheduler --scheduler-file`"):
        segment(dataclasses.replace(p, output_path=str(tmp_path / "o.tif"), scheduler=str(bad)))
    with pytest.raises(GeoSegError, match="neither a scheduler address"):
        segment(dataclasses.replace(p, output_path=str(tmp_path / "o.tif"), scheduler=str(tmp_path / "nope")))
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "classes.tif", "classes.tif.aux.xml"]


def test_without_dask_the_message_says_what_to_install(scene, tmp_path, monkeypatch):
    """dask is optional: imported only with a scheduler, and its absence is explained."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(GeoSegError, match=r"lacks dask distributed. Install them with `pip install dask distributed`"):
        segment(params(scene, str(tmp_path / "out"), "tcp://127.0.0.1:8786"))
    assert os.listdir(tmp_path) == []


def test_dask_is_imported_only_with_a_scheduler(scene, tmp_path):
    """An in-process run (and the plugin's modules) never import dask: it is optional."""
    code = (
        "import sys\n"
        "from geoseg.core.predict import SegmentParams, segment\n"
        "from geoseg.core import distributed, cluster, __main__\n"
        f"segment(SegmentParams({scene[0]!r}, {scene[1]!r}, {str(tmp_path / 'c.tif')!r}, batch_size=4))\n"
        "assert not {'dask', 'distributed'} & set(sys.modules), 'dask was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != distributed.ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.exists(tmp_path / "c.tif")


def test_cluster_command_starts_and_stops_its_processes():
    """`python -m geoseg.core cluster`: prints the address of a scheduler with its workers, and SIGTERM
    stops them all (exit 128 + 15)."""
    cmd = [sys.executable, "-m", "geoseg.core", "cluster", "--workers", "1", "--port", "0", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        address = first.split(" at ", 1)[1].split(" ", 1)[0]
        wait_for_workers(address, 1)
        pids = worker_pids(address)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "the scheduler and its 1 workers were stopped" in err
    assert len(pids) == 1 and not os.path.exists(f"/proc/{pids[0]}")
    with pytest.raises(GeoSegError, match="could not connect"):
        distributed.connect(address)


def test_worker_without_the_files_says_shared_storage(tmp_path):
    with pytest.raises(GeoSegError, match="cannot see /nowhere/in.tif. The workers must see") as e:
        distributed._check_visible([("INPUT", "/nowhere/in.tif")], str(tmp_path))
    assert e.value.param == "INPUT"
    with pytest.raises(GeoSegError, match="must be on storage that every worker shares"):
        distributed._check_visible([], str(tmp_path / "missing"))


def test_blocks_cover_the_strips_several_per_worker():
    from geoseg.core.grid import make_tiling

    t = make_tiling(W, H, 32, 16, 16, 4)
    layout = distributed.blocks(t, 2)
    assert layout[0][0] == 0 and layout[-1][1] == len(t.ys)
    assert all(a < b and b == c for (a, b), (c, _) in itertools.pairwise(layout))
    assert len(layout) >= 2 * 2
    infos = [distributed.part_info(_Info(), t, blk) for blk in layout]
    assert sum(i.height for i in infos) == H  # the parts' kept rows tile the raster exactly


@dataclasses.dataclass(frozen=True)
class _Info:
    width: int = W
    height: int = H
    geotransform: tuple = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
