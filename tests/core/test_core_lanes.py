"""Issue 18, model lanes: on the CPU, copies of an onnxruntime model run whole batches side by side
(core.backends model_lanes), and segment hands their results on in the order it read the batches."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest

from geoseg.core import backends, predict
from geoseg.core.backends import OnnxBackend, model_lanes, open_backend, read_model_card
from geoseg.core.card import CARD_KEY
from geoseg.core.pipeline import END, Pipe, Stop
from geoseg.core.stream import Inference, _Batch
from geoseg.models.export import export_onnx
from tests.core.test_core_predict import HOLE, H, W, card, conv_stack, geoseg_threads, run_segment
from tests.support.helpers import make_raster


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The predict tests' raster with a nodata hole, and their model of radius 3."""
    root = tmp_path_factory.mktemp("lanes")
    raster, model = str(root / "scene.tif"), str(root / "conv.onnx")
    make_raster(raster, W, H, bands=3, hole=HOLE)
    export_onnx(conv_stack(), 3, model, metadata={CARD_KEY: json.dumps(card())})
    return raster, model, None


class Lane:
    """A stand-in model copy whose runs take uneven times, so that later batches often finish first."""

    on_cuda = False

    def __init__(self, name: str, fail_at: int | None = None) -> None:
        self.name, self.fail_at, self.runs = name, fail_at, []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        k = int(x[0, 0, 0, 0])
        time.sleep(0.02 if k % 3 == 0 else 0.001)
        if k == self.fail_at:
            raise RuntimeError(f"lane {self.name} failed on batch {k}")
        self.runs.append(k)
        return x * 2


def batches(n: int) -> list[_Batch]:
    return [_Batch(0, k, 0, np.full((2, 1, 4, 4), k, np.float32), np.ones((4, 4), bool), False) for k in range(n)]


def feed(items: list[_Batch], stop: threading.Event) -> Pipe[_Batch]:
    """A pipe filled by its own thread, as the reader stage fills segment's."""
    pipe: Pipe[_Batch] = Pipe(stop)

    def put() -> None:
        try:
            for b in [*items, END]:
                pipe.put(b)
        except Stop:
            pass

    threading.Thread(target=put, daemon=True).start()
    return pipe


def test_lanes_share_the_batches_and_hand_them_on_in_reading_order():
    lanes = [Lane("a"), Lane("b"), Lane("c")]
    infer = Inference(lanes[0], 2, 0.0, 0.0, lanes=lanes)
    got = list(infer.ordered(feed(batches(30), threading.Event())))
    assert [b.first for b, _ in got] == list(range(30))
    for b, scores in got:
        np.testing.assert_array_equal(scores, b.x * 2)
    assert all(lane.runs for lane in lanes)  # every lane took batches
    assert sorted(k for lane in lanes for k in lane.runs) == list(range(30))  # each batch once


def test_a_failing_lane_raises_its_error_and_leaves_no_thread():
    lanes = [Lane("a", fail_at=7), Lane("b", fail_at=7)]
    infer = Inference(lanes[0], 2, 0.0, 0.0, lanes=lanes)
    seen = []
    with pytest.raises(RuntimeError, match="failed on batch 7"):
        for b, _ in infer.ordered(feed(batches(30), threading.Event())):
            seen.append(b.first)
    assert seen == list(range(7))
    assert [t for t in threading.enumerate() if t.name.startswith("geoseg-model")] == []


def test_stopping_mid_stream_ends_the_lanes():
    stop = threading.Event()
    lanes = [Lane("a"), Lane("b")]
    infer = Inference(lanes[0], 2, 0.0, 0.0, lanes=lanes)
    stream = infer.ordered(feed(batches(50), stop))
    assert [next(stream)[0].first for _ in range(5)] == list(range(5))
    stop.set()
    with pytest.raises(Stop):
        list(stream)
    assert [t for t in threading.enumerate() if t.name.startswith("geoseg-model")] == []
    assert sum(len(lane.runs) for lane in lanes) < 50


def test_one_lane_is_the_model_itself():
    lane = Lane("only")
    infer = Inference(Lane("first"), 2, 0.0, 0.0, lanes=[lane])
    assert infer.lanes == [] and infer.engine is lane
    assert [b.first for b, _ in infer.ordered(feed(batches(4), threading.Event()))] == [0, 1, 2, 3]


def test_lanes_divide_the_cores_and_need_room_in_the_budget(scene, monkeypatch):
    _, model, _ = scene
    engine = open_backend(model, read_model_card(model), "onnxruntime", "cpu", 32)
    monkeypatch.setattr(backends.os, "cpu_count", lambda: 4)
    lanes = model_lanes(engine)
    assert len(lanes) == 2 and all(isinstance(e, OnnxBackend) for e in lanes)
    assert [e.session.get_session_options().intra_op_num_threads for e in lanes] == [2, 2]
    assert model_lanes(engine, batch_bytes=6e6, budget_mb=10) == [engine]  # two batches of 6 MB: over 10 MB
    assert len(model_lanes(engine, batch_bytes=4e6, budget_mb=10)) == 2
    monkeypatch.setattr(backends, "CPU_LANES", 1)
    assert model_lanes(engine) == [engine]
    monkeypatch.setattr(backends, "CPU_LANES", 2)
    monkeypatch.setattr(backends.os, "cpu_count", lambda: 1)
    assert model_lanes(engine) == [engine]


LANES_MESSAGE = "The model runs in 3 lanes of batches, side by side on the CPU cores."


def test_segment_in_lanes_gives_the_bytes_of_one_model(scene, tmp_path, monkeypatch, caplog):
    raster, model, _ = scene
    monkeypatch.setattr(backends.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(backends, "CPU_LANES", 3)
    with caplog.at_level(logging.INFO, logger="geoseg"):  # 72 tiles of 32²: too small a run for lanes
        ref, ref_probs, _ = run_segment(raster, model, tmp_path, "one", batch_size=2)
    assert LANES_MESSAGE not in caplog.messages
    monkeypatch.setattr(predict, "LANES_MIN_PIXELS", 0)
    with caplog.at_level(logging.INFO, logger="geoseg"):
        classes, probs, r = run_segment(raster, model, tmp_path, "three", batch_size=2)
    assert LANES_MESSAGE in caplog.messages
    np.testing.assert_array_equal(classes, ref)
    np.testing.assert_array_equal(probs, ref_probs)  # bit for bit
    assert (r.batch_size, r.final_batch_size) == (2, 2) and geoseg_threads() == []


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_segment_leaves_every_thread_at_the_process_priority(scene, tmp_path, monkeypatch):
    """No stage lowers its own priority: GDAL's shared compression pool, started from a stage's thread,
    would inherit it and keep it for every plugin after the run."""
    import glob
    import os

    raster, model, _ = scene
    monkeypatch.setattr(predict, "LANES_MIN_PIXELS", 0)
    run_segment(raster, model, tmp_path, "nice", batch_size=2)
    nice = {int(open(f"{t}/stat").read().rsplit(")", 1)[1].split()[16]) for t in glob.glob("/proc/self/task/*")}
    assert nice == {os.getpriority(os.PRIO_PROCESS, 0)}
