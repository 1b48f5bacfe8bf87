"""Training under torchrun (DistributedDataParallel) on this machine's CPU: real torchrun processes over gloo,
tiny chips and models. N processes equal one where that is exact (GroupNorm; BatchNorm against gradient
accumulation over the same micro-batches), a checkpoint resumes at any number of processes, only rank 0
writes, and an error or a cancel in one process stops them all. Pure engine (the children are plain Python)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from geoseg.core.checkpoint import load_checkpoint
from geoseg.core.cli import add_arguments, args_from_params, params_from_args
from geoseg.core.dataset import open_chips
from geoseg.core.ddp import TrainShards, ValShards, World, parse_line, per_rank_batch, progress_lines
from geoseg.core.errors import Cancelled, GeoSegError
from geoseg.core.metrics import metrics_from_confusion
from geoseg.core.reports import BatchReport, EpochReport
from geoseg.core.torchrun import torchrun_command, train_torchrun
from geoseg.core.train import TrainParams, output_paths, train
from tests.support.chips import make_chips

GROUP_NORM = {"base_width": 4, "depth": 2, "norm": "group"}
BATCH_NORM = {"base_width": 4, "depth": 2}
OUTPUTS = ["m.last.pt", "m.metrics.csv", "m.onnx", "m.pt"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this process, as torchrun gives each of its processes on a shared CPU (two
    threads on two busy cores make a tiny step many times slower; results are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> str:
    """20 chips of 32 px without nodata: 12 for training (3 batches of 4), 8 for validation (2 batches)."""
    return make_chips(str(tmp_path_factory.mktemp("ddp")), 128, 160, validation_fraction=0.4)


def params(chips: str, out, **kw) -> TrainParams:
    """Cross-entropy without class weights or ignored pixels: a mean over pixels that the processes' equal
    pieces of a batch average exactly (Dice, computed per piece, would not)."""
    kw = {"model_options": GROUP_NORM, "epochs": 1, "batch_size": 4, "loss": "ce", **kw}
    return TrainParams(chips, str(out), device="cpu", **kw)


def torchrun(p: TrainParams, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m geoseg.core train …` as a user types it (the venv's .pth gives geoseg)."""
    cmd = torchrun_command(p, processes, sys.executable)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)


def weights(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=1e-4, atol=2e-6, msg=k)


def metrics(path: str) -> list[dict]:
    """The metrics CSV without the timing column; losses as numbers (summed in another order: equal to
    rounding), the validation metrics as written (counts of pixels: exactly equal)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        del row["seconds"]
        for key in ("train_loss", "val_loss"):
            row[key] = pytest.approx(float(row[key]), rel=1e-5)
    return rows


# ---------------------------------------------------------------- rules, without processes
def test_shards_of_the_processes_make_the_single_process_batches() -> None:
    """At one process the order is torch's RandomSampler's from the same generator, draw for draw (one
    process shuffles as before DDP); at N the pieces of each step make that step's batch."""
    n, batch = 22, 8  # two full batches and a tail of 6
    single = list(TrainShards(n, batch, World(), torch.Generator().manual_seed(7)))
    gen = torch.Generator().manual_seed(7)
    assert single == list(torch.utils.data.RandomSampler(range(n), generator=gen))
    gen_after = torch.Generator().manual_seed(7)
    list(TrainShards(n, batch, World(), gen_after))
    assert torch.equal(gen_after.get_state(), gen.get_state())
    steps = [single[i : i + batch] for i in range(0, n, batch)]
    for world, kept in ((2, steps), (4, steps[:2])):  # at 4 the tail of 6 gives each process 1: left out
        pieces = [list(TrainShards(n, batch, World(world, r), torch.Generator().manual_seed(7))) for r in range(world)]
        size = [len(s) // world for s in kept]
        starts = [sum(size[:k]) for k in range(len(kept))]
        rebuilt = [
            [i for r in range(world) for i in pieces[r][at : at + m]] for at, m in zip(starts, size, strict=True)
        ]
        assert rebuilt == kept
    shares = [list(ValShards(10, 4, World(3, r))) for r in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(TrainShards(13, 4, World(), torch.Generator())) == 12  # a last batch of 1 is dropped, as before


def test_world_batch_and_command_line() -> None:
    assert World.from_env({}) == World(1, 0, 0)
    assert World.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(4, 3, 1)
    with pytest.raises(GeoSegError, match="RANK 4 does not fit WORLD_SIZE 2"):
        World.from_env({"WORLD_SIZE": "2", "RANK": "4"})
    assert per_rank_batch(8, 4) == 2
    with pytest.raises(GeoSegError, match=r"BATCH_SIZE 6 cannot be shared equally by 4 processes.*4 or 8") as e:
        per_rank_batch(6, 4)
    assert e.value.param == "BATCH_SIZE"

    p = TrainParams("chips dir", "out/m.pt", epochs=3, augment=False, model_options=GROUP_NORM, learning_rate=0.002)
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainParams)
    assert params_from_args(TrainParams, parser.parse_args(args_from_params(p))) == p
    cmd = torchrun_command(p, 3, "/opt/py")
    assert cmd[:7] == [
        "/opt/py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=3",
        "-m",
    ]
    assert cmd[7:9] == ["geoseg.core", "train"] and cmd[9:] == args_from_params(p)


def test_progress_lines_round_trip(monkeypatch, capsys) -> None:
    seen: list = []
    assert progress_lines(seen.append, seen.append) == (seen.append, seen.append)  # not asked for: unchanged
    monkeypatch.setenv("GEOSEG_PROGRESS", "1")
    progress, report = progress_lines(seen.append, seen.append)
    batch = BatchReport(2, 5, 3, 7, 0.25)
    progress(0.5)
    report(batch)
    lines = capsys.readouterr().out.splitlines()
    assert [parse_line(line) for line in lines] == [("progress", 0.5), ("batch", batch)]
    assert seen == [0.5, batch] and parse_line("INFO: epoch 1/2") is None and parse_line("@geoseg {bad") is None


def test_batch_not_divisible_by_the_processes_is_a_clear_error(chips, tmp_path, monkeypatch) -> None:
    p = params(chips, tmp_path / "m.pt", batch_size=3)
    with pytest.raises(GeoSegError, match=r"BATCH_SIZE 3 cannot be shared equally by 2 processes.*2 or 4"):
        train_torchrun(p, 2)  # refused before torchrun starts
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(GeoSegError, match="BATCH_SIZE 3 cannot be shared equally by 2 processes"):
        train(p)  # what every torchrun process says, before it waits for any other
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- real torchrun processes
@pytest.fixture(scope="module")
def group_norm_runs(chips, tmp_path_factory) -> dict:
    """One epoch of a GroupNorm UNet (augmentation on) in one process and, through the launcher the dialog
    uses, in two; with what the launcher passed on from rank 0's lines."""
    root = tmp_path_factory.mktemp("gn")
    batch_losses: list[float] = []
    one = train(params(chips, root / "one" / "m.pt"), report=lambda r: batch_losses.append(getattr(r, "loss", None)))
    reports: list = []
    fractions: list[float] = []
    two = train_torchrun(params(chips, root / "two" / "m.pt"), 2, fractions.append, report=reports.append)
    return {
        "root": root,
        "one": one,
        "two": two,
        "reports": reports,
        "fractions": fractions,
        "one_losses": batch_losses,
    }


def test_group_norm_in_two_processes_equals_one(group_norm_runs) -> None:
    one, two, reports = group_norm_runs["one"], group_norm_runs["two"], group_norm_runs["reports"]
    assert_same_weights(weights(output_paths(one.model_path)["last"]), weights(output_paths(two.model_path)["last"]))
    assert metrics(one.metrics_path) == metrics(two.metrics_path)  # validation shared out, summed: the same
    assert two.val_miou == pytest.approx(one.val_miou, abs=1e-12)
    assert load_checkpoint(output_paths(two.model_path)["last"])["processes"] == 2
    # progress and reports came from rank 0's lines: 3 steps of the global batch, the same losses
    batches = [r for r in reports if isinstance(r, BatchReport)]
    assert [(b.batch, b.batches) for b in batches] == [(1, 3), (2, 3), (3, 3)]
    assert [b.loss for b in batches] == pytest.approx([x for x in group_norm_runs["one_losses"] if x is not None])
    assert [e.epoch for e in reports if isinstance(e, EpochReport)] == [1]
    assert group_norm_runs["fractions"][-1] == 1.0 and two.card == load_checkpoint(two.model_path)["card"]
    # rank 0 alone wrote: the four outputs, whole, and nothing else (no second copy, no partial file)
    assert sorted(os.listdir(os.path.dirname(two.model_path))) == OUTPUTS


def test_checkpoint_of_two_processes_resumes_in_one(chips, group_norm_runs) -> None:
    """Rank 0's checkpoint continued in one process (with more EPOCHS) = the one-process run continued."""
    root = group_norm_runs["root"]
    runs = {name: train(params(chips, root / name / "m.pt", epochs=2, resume=True)) for name in ("one", "two")}
    one, two = (output_paths(runs[name].model_path)["last"] for name in ("one", "two"))
    assert_same_weights(weights(one), weights(two))
    assert metrics(runs["one"].metrics_path) == metrics(runs["two"].metrics_path)
    assert [h["epoch"] for h in runs["two"].history] == [1, 2] and load_checkpoint(two)["processes"] == 1


def test_batch_norm_equals_gradient_accumulation_over_the_same_pieces(chips, tmp_path) -> None:
    """BatchNorm normalises each process's piece with that piece's statistics (no SyncBatchNorm on the CPU):
    one process that runs each piece forward on its own and accumulates the gradients (each loss / 2, as DDP
    averages) takes the same steps. Running statistics: rank 0's, from its own pieces, are the saved ones."""
    from geoseg.core.trainer import Run

    p = params(chips, tmp_path / "two" / "m.pt", model_options=BATCH_NORM, augment=False)
    done = torchrun(p)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Best validation mIoU") >= 1

    ref = Run(dataclasses.replace(p, output_model=str(tmp_path / "ref.pt")), open_chips(chips), "cpu")
    ref.model.train()
    for x, y in ref.train_loader:  # one process: the global batches, in the same order
        ref.optimizer.zero_grad(set_to_none=True)
        for r in range(2):
            kept = {k: v.clone() for k, v in ref.model.named_buffers()}
            (ref._loss(ref.model(x[2 * r : 2 * r + 2]), y[2 * r : 2 * r + 2]) / 2).backward()
            if r:  # rank 1's statistics never reach the saved model
                for k, v in ref.model.named_buffers():
                    v.copy_(kept[k])
        ref.optimizer.step()
        ref.scheduler.step()
    assert_same_weights(weights(output_paths(p.output_model)["last"]), ref.model.state_dict())
    # validation, shared out over the processes with rank 0's statistics, is the saved model's
    _, cm = ref.validate_epoch(lambda: False, 0)
    assert (
        metrics(output_paths(p.output_model)["metrics"])[0]["val_miou"] == f"{metrics_from_confusion(cm).mean_iou:.6f}"
    )


def test_interrupted_run_resumes_in_two_processes_as_if_uninterrupted(chips, tmp_path) -> None:
    full = train(params(chips, tmp_path / "full" / "m.pt", epochs=2))
    p = params(chips, tmp_path / "cut" / "m.pt", epochs=2)
    checks = iter(range(100))  # epoch 1: 3 training and 2 validation batches; then the first of epoch 2
    with pytest.raises(Cancelled, match="epoch 2, batch 1"):
        train(p, cancelled=lambda: next(checks) >= 5)
    assert load_checkpoint(output_paths(p.output_model)["last"])["epoch"] == 1
    resumed = train_torchrun(dataclasses.replace(p, resume=True), 2)
    assert_same_weights(
        weights(output_paths(full.model_path)["last"]), weights(output_paths(resumed.model_path)["last"])
    )
    assert metrics(full.metrics_path) == metrics(resumed.metrics_path)
    assert load_checkpoint(output_paths(resumed.model_path)["last"])["processes"] == 2


def test_cancel_stops_every_process_and_keeps_whole_files(chips, tmp_path) -> None:
    """The launcher's cancel: SIGTERM to torchrun's process group; every process stops at its next batch,
    as a cancelled run does; what is left is whole (the last finished epoch's files) or nothing."""
    seen: list = []
    p = params(chips, tmp_path / "out" / "m.pt", epochs=200)
    with pytest.raises(Cancelled, match="Training cancelled in epoch"):
        train_torchrun(p, 2, report=seen.append, cancelled=lambda: len(seen) >= 2)
    left = sorted(os.listdir(tmp_path / "out")) if os.path.isdir(tmp_path / "out") else []
    assert left in ([], OUTPUTS)
    if left:
        assert load_checkpoint(output_paths(p.output_model)["last"])["epoch"] < 200


def _process(rank: int, port: int, results) -> None:
    """One of two processes (forked: torch is already imported) that agree through core.ddp.Group; rank 1
    fails at the point where rank 0 sums a value."""
    from geoseg.core.ddp import World, process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # this child's own environment
    with process_group(World(2, rank, rank), "cpu") as group:
        try:
            if rank == 1:
                group.fail(GeoSegError("CHIPS: chip 7 cannot be read"))
            group.sums((1.0,))
            results.put((rank, "went on"))
        except GeoSegError as e:
            results.put((rank, str(e)))


def test_an_error_in_one_process_stops_every_process_with_its_message() -> None:
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_process, args=(rank, port, results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]  # no hang, both ended
    assert dict(results.get(timeout=5) for _ in procs) == {
        0: "Process 1 of 2 failed: CHIPS: chip 7 cannot be read",
        1: "CHIPS: chip 7 cannot be read",
    }
