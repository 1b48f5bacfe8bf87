"""geoseg:segment with SCHEDULER through scripts/qgis_process, on a real Dask cluster (a scheduler and
2 workers as subprocesses): the same class map and probabilities as the in-process algorithm."""

from __future__ import annotations

import os

import pytest

from tests.core.test_core_dask import assert_same_maps, write_scene
from tests.support.dask_cluster import dask_cluster
from tests.support.helpers import qgis_process

__all__ = ["dask_cluster"]  # the fixture, imported for this module


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("dask-alg"), "scène.tif")


def test_qgis_process_segment_on_a_dask_cluster(geoseg_provider, scene, dask_cluster, tmp_path):
    import processing

    raster, model = scene
    common = {"INPUT": raster, "MODEL": model, "CHIP_SIZE": 32, "STRIDE_X": 16, "STRIDE_Y": 16, "CROP": 4}
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    processing.run(
        "geoseg:segment",
        {**common, "OUTPUT": str(local / "classes.tif"), "OUTPUT_PROBABILITIES": str(local / "probs.tif")},
    )
    args = [f"{k}={v}" for k, v in common.items()]
    proc = qgis_process(
        "run",
        "geoseg:segment",
        "--",
        *args,
        f"OUTPUT={remote / 'classes.tif'}",
        f"OUTPUT_PROBABILITIES={remote / 'probs.tif'}",
        f"SCHEDULER={dask_cluster.address}",
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "parts" in proc.stdout + proc.stderr  # the run went through the cluster (its log says so)
    assert_same_maps(str(remote), str(local))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
