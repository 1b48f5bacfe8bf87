"""Issue 18, a loader that can feed a GPU: the chips packed once into a memory-mapped array in the chips
folder (reused while chips.csv and the chip files are unchanged), batches read whole and bit-identical
to reading the files, and the batch augmentation vectorised on the batch's device."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from osgeo import gdal

from geoseg.core.dataset import ChipDataset, augment_batch, open_chips
from geoseg.core.errors import Cancelled
from geoseg.core.packed import (
    PACK_DIR,
    FileBatches,
    PackedDataset,
    collate_batch,
    training_datasets,
    training_pack,
)
from geoseg.core.train import TrainParams, train
from tests.support.chips import make_chips

TINY = {"base_width": 4, "depth": 2}


def _export(root, dtype=gdal.GDT_UInt16, bands=3, chip_format="geotiff") -> str:
    return make_chips(str(root), 128, 96, bands=bands, hole=(100, 70, 10, 10), dtype=dtype, chip_format=chip_format)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    """12 chips of 32 px, 3 bands UInt16 with a nodata hole, a quarter for validation (never modified)."""
    return _export(tmp_path_factory.mktemp("packed"))


@pytest.fixture
def chips(exported, tmp_path) -> str:
    """A copy of the exported chips, to change, pack or make read-only."""
    out = str(tmp_path / "chips")
    shutil.copytree(exported, out, ignore=shutil.ignore_patterns(PACK_DIR))
    return out


def _bits(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a.view(np.uint32) if a.dtype == np.float32 else a


def _file_batch(ds: ChipDataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as the per-file loader makes it: ChipDataset's samples, stacked by default_collate."""
    return torch.utils.data.default_collate([ds[i] for i in indices])


def _images_stat(folder: str) -> tuple[int, int]:
    st = os.stat(os.path.join(folder, PACK_DIR, "images.npy"))
    return st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize(
    ("dtype", "bands", "chip_format"),
    [(gdal.GDT_UInt16, 4, "geotiff"), (gdal.GDT_Float32, 2, "geotiff"), (gdal.GDT_Byte, 3, "png")],
    ids=["geotiff-uint16", "geotiff-float32", "png-byte"],
)
def test_packed_batches_equal_reading_the_files_bit_for_bit(tmp_path, dtype, bands, chip_format):
    folder = open_chips(_export(tmp_path, dtype, bands, chip_format))
    assert folder.train[0]["image"].endswith(".png" if chip_format == "png" else ".tif")
    pack = training_pack(folder)
    assert pack is not None
    for row in folder.train + folder.validation:  # the pack holds each file's pixels in their own type
        i = pack.index[(row["image"], row["mask"])]
        pixels = gdal.Open(os.path.join(folder.path, row["image"])).ReadAsArray()
        np.testing.assert_array_equal(pack.images[i], pixels.reshape(pack.images.shape[1:]))
        assert pack.images.dtype == pixels.dtype
        np.testing.assert_array_equal(pack.masks[i], gdal.Open(os.path.join(folder.path, row["mask"])).ReadAsArray())
    files, packed = ChipDataset(folder, folder.train), PackedDataset(folder, folder.train, pack)
    order = list(np.random.default_rng(0).permutation(len(files)))
    x, y = packed.__getitems__(order)
    fx, fy = _file_batch(files, order)
    assert x.dtype == fx.dtype == torch.float32 and y.dtype == fy.dtype == torch.int64
    assert (y == 255).any() and ((y == 255)[:, None] & (x == 0)).any()  # the nodata hole is in there
    np.testing.assert_array_equal(_bits(x), _bits(fx))
    np.testing.assert_array_equal(_bits(y), _bits(fy))
    bx, by = FileBatches(folder, folder.train).__getitems__(order)  # the fallback's batches too
    np.testing.assert_array_equal(_bits(bx), _bits(fx))
    np.testing.assert_array_equal(_bits(by), _bits(fy))


def test_pack_is_reused_while_unchanged_and_rebuilt_when_a_chip_or_chips_csv_changes(chips, caplog):
    caplog.set_level(logging.INFO, logger="geoseg")
    folder = open_chips(chips)
    assert training_pack(folder) is not None
    first = _images_stat(chips)
    assert training_pack(open_chips(chips)) is not None
    assert _images_stat(chips) == first and "Using the packed chips" in caplog.text  # not written again

    # a chip file's modification time
    row = folder.train[0]
    image = os.path.join(chips, row["image"])
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    assert training_pack(open_chips(chips)) is not None
    assert f"{row['image']} changed" in caplog.text and _images_stat(chips) != first
    second = _images_stat(chips)

    # a chip file's content and size: the new pixels are packed
    ds = gdal.Open(image, gdal.GA_Update)
    new = ds.ReadAsArray() // 2 + 1
    ds.WriteArray(new)
    ds.SetMetadataItem("EDITED", "by hand " * 20)
    ds = None
    assert os.path.getsize(image) != st.st_size
    pack = training_pack(open_chips(chips))
    assert pack is not None and _images_stat(chips) != second
    np.testing.assert_array_equal(pack.images[pack.index[(row["image"], row["mask"])]], new)
    third = _images_stat(chips)

    # chips.csv: a row moved to the other split
    path = os.path.join(chips, "chips.csv")
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8").write(text.replace(",train,", ",validation,", 1))
    caplog.clear()
    folder = open_chips(chips)
    assert training_pack(folder) is not None
    assert "chips.csv changed" in caplog.text and _images_stat(chips) != third
    assert sorted(os.listdir(os.path.join(chips, PACK_DIR))) == ["header.json", "images.npy", "masks.npy"]
    assert not [n for n in os.listdir(chips) if "partial" in n]  # the stale pack was removed


@contextmanager
def read_only(folder: str) -> Iterator[None]:
    """`folder` where no new file can be created: mode bits, or for root (who ignores them) the
    immutable attribute."""
    root = os.geteuid() == 0
    if root:
        made = subprocess.run(["chattr", "+i", folder], capture_output=True, check=False).returncode == 0
    else:
        os.chmod(folder, 0o555)
        made = True
    try:
        probe = os.path.join(folder, "probe")
        try:
            os.mkdir(probe)
            os.rmdir(probe)
            made = False
        except OSError:
            pass
        if not made:
            pytest.skip("this file system lets this user write in any folder; no read-only folder to test with")
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", folder], capture_output=True, check=False)
        else:
            os.chmod(folder, 0o755)


def test_read_only_folder_trains_from_the_files_with_the_same_result(chips, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="geoseg")
    locked = str(tmp_path / "locked")
    shutil.copytree(chips, locked)

    def run(folder: str, out: str):
        p = TrainParams(folder, str(tmp_path / out / "m.pt"), device="cpu", model_options=TINY, epochs=1, batch_size=4)
        return train(p)

    packed = run(chips, "a")
    assert os.path.isdir(os.path.join(chips, PACK_DIR))
    caplog.clear()
    with read_only(locked):
        fallback = run(locked, "b")
    assert "reading the chip files directly" in caplog.text
    assert not [n for n in os.listdir(locked) if n.startswith(".")]  # nothing written there
    for a, b in zip(packed.history, fallback.history, strict=True):  # same batches, same arithmetic
        assert (a["train_loss"], a["val_loss"], a["val_miou"]) == (b["train_loss"], b["val_loss"], b["val_miou"])


def test_cancelled_or_failed_build_leaves_no_half_pack(chips):
    calls = {"n": 0}

    def cancel_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    before = sorted(os.listdir(chips))
    with pytest.raises(Cancelled, match="packing the chips"):
        training_pack(open_chips(chips), cancelled=cancel_after_three)
    assert sorted(os.listdir(chips)) == before

    # a full disk (a file-size limit: writes past 16 KiB fail with EFBIG): no pack, the files are read
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, old_limit[1]))
    try:
        train_ds, _ = training_datasets(open_chips(chips))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert type(train_ds) is FileBatches
    assert sorted(os.listdir(chips)) == before

    # a partial pack left by a build killed long ago is removed by the next build
    stale = os.path.join(chips, f".{PACK_DIR}.partial-killed")
    os.mkdir(stale)
    os.utime(stale, (1, 1))
    assert training_pack(open_chips(chips)) is not None
    assert sorted(os.listdir(chips)) == sorted([*before, PACK_DIR])


def test_a_pack_folder_linked_out_of_the_chips_folder_is_neither_read_nor_replaced(chips, tmp_path, caplog):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    os.symlink(outside, os.path.join(chips, PACK_DIR))
    train_ds, _ = training_datasets(open_chips(chips))
    assert type(train_ds) is FileBatches and "reading the chip files directly" in caplog.text
    assert os.listdir(outside) == ["keep.txt"] and os.path.islink(os.path.join(chips, PACK_DIR))


KILLED_MID_BUILD = r"""
import os, signal, sys
from geoseg.core.dataset import open_chips
from geoseg.core.packed import training_pack
def progress(f):
    if f > 0.3:  # a third of the chips written: killed as by a power cut, no clean-up can run
        os.kill(os.getpid(), signal.SIGKILL)
training_pack(open_chips(sys.argv[1]), progress=progress)
"""


def test_killed_build_leaves_no_pack_and_the_next_run_packs_whole(chips):
    done = subprocess.run([sys.executable, "-c", KILLED_MID_BUILD, chips], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(chips, PACK_DIR))  # only a hidden partial folder, never the pack
    assert [n for n in os.listdir(chips) if "partial" in n]
    folder = open_chips(chips)
    pack = training_pack(folder)
    assert pack is not None
    x, _ = PackedDataset(folder, folder.train, pack).__getitems__(range(len(folder.train)))
    fx, _ = _file_batch(ChipDataset(folder, folder.train), range(len(folder.train)))
    assert torch.equal(x, fx)


def _loader(ds, batch: int, seed: int, **kw):
    return torch.utils.data.DataLoader(
        ds, batch_size=batch, generator=torch.Generator().manual_seed(seed), collate_fn=collate_batch, **kw
    )


def test_batches_follow_the_seed_as_the_file_loader_did(exported):
    folder = open_chips(exported)
    train_ds, _ = training_datasets(folder)
    assert isinstance(train_ds, PackedDataset)
    files = torch.utils.data.DataLoader(
        ChipDataset(folder, folder.train), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    packed = _loader(train_ds, 4, 7, shuffle=True)
    again = _loader(train_ds, 4, 7, shuffle=True)
    other = _loader(train_ds, 4, 8, shuffle=True)
    for _ in range(2):  # two epochs: the generator carries on
        ref = list(files)
        got, same, diff = list(packed), list(again), list(other)
        assert len(got) == len(ref) == 3
        for (x, y), (fx, fy), (sx, _) in zip(got, ref, same, strict=True):
            assert torch.equal(x, fx) and torch.equal(y, fy) and torch.equal(x, sx)
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(got, diff, strict=True))


def test_distributed_sampler_pieces_are_disjoint_and_cover_the_chips(exported):
    folder = open_chips(exported)
    train_ds, _ = training_datasets(folder)
    files = ChipDataset(folder, folder.train)
    n = len(train_ds)
    seen: list[int] = []
    for rank in range(2):
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        indices = list(sampler)
        batches = list(torch.utils.data.DataLoader(train_ds, batch_size=2, sampler=sampler, collate_fn=collate_batch))
        x = torch.cat([b[0] for b in batches])
        fx, _ = _file_batch(files, indices)
        assert torch.equal(x, fx)  # each process's batches are its sampler's chips, in its order
        seen += indices
    padded = -n % 2  # DistributedSampler repeats chips to make equal pieces
    assert sorted(set(seen)) == list(range(n)) and len(seen) == n + padded
    assert len(set(seen[: len(seen) // 2]) & set(seen[len(seen) // 2 :])) == padded


def _augment_per_sample(x, y, generator):
    """The former augment_batch (a Python loop over the samples), kept as the reference."""
    n = x.shape[0]

    def coin(p: float = 0.5):
        return torch.rand(n, generator=generator) < p

    xs, ys = list(x.unbind(0)), list(y.unbind(0))
    hflip, vflip = coin(), coin()
    rot = torch.randint(0, 4, (n,), generator=generator) if x.shape[-1] == x.shape[-2] else torch.zeros(n)
    for i in range(n):
        if hflip[i]:
            xs[i], ys[i] = xs[i].flip(-1), ys[i].flip(-1)
        if vflip[i]:
            xs[i], ys[i] = xs[i].flip(-2), ys[i].flip(-2)
        k = int(rot[i])
        if k:
            xs[i], ys[i] = torch.rot90(xs[i], k, (-2, -1)), torch.rot90(ys[i], k, (-2, -1))
    x, y = torch.stack(xs), torch.stack(ys)
    shape = (n, 1, 1, 1)
    brightness = (torch.rand(shape, generator=generator) - 0.5) * 0.4 * coin().view(shape)
    contrast = 1 + (torch.rand(shape, generator=generator) - 0.5) * 0.4 * coin().view(shape)
    gamma = torch.exp((torch.rand(shape, generator=generator) - 0.5) * 0.4 * coin().view(shape))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    return ((x - lo) / span).clamp(0, 1).pow(gamma) * span + lo, y


@pytest.mark.parametrize("shape", [(16, 3, 8, 8), (5, 2, 6, 9)], ids=["square", "oblong"])
def test_vectorised_augmentation_equals_the_per_sample_loop(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (shape[0], *shape[2:]), generator=torch.Generator().manual_seed(1))
    x0, y0 = x.clone(), y.clone()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        ax, ay = augment_batch(x, y, g1)
        rx, ry = _augment_per_sample(x, y, g2)
        assert torch.equal(ax, rx) and torch.equal(ay, ry)
        assert torch.equal(g1.get_state(), g2.get_state())  # the same draws: runs resume alike
    assert torch.equal(x, x0) and torch.equal(y, y0)  # the loader's tensors are left as they were
