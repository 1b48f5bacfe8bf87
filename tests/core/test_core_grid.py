"""The geodl/geoInfer chip grid: unit cases and hypothesis properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.core.grid import axis_origins, make_grid


def geoinfer_origins(length: int, chip: int, stride: int) -> list[int]:
    """The course's geoInfer loop, transcribed: k*stride, shifted back at the edge, deduplicated."""
    out = []
    for k in range(math.ceil(length / stride)):
        o = k * stride
        if o + chip > length:
            o = length - chip
        if o not in out:
            out.append(o)
    return out


def test_origins_shift_last_chip_to_edge():
    assert axis_origins(100, 32, 32) == [0, 32, 64, 68]
    assert axis_origins(96, 32, 32) == [0, 32, 64]
    assert axis_origins(100, 32, 16) == [0, 16, 32, 48, 64, 68]


def test_axis_shorter_than_chip_is_single_padded_chip():
    g = make_grid(20, 50, 32)
    wins = list(g)
    assert g.xs == [0] and g.ys == [0, 18]
    assert {(w.width, w.pad_x) for w in wins} == {(20, 12)}
    assert all(w.height == 32 and w.pad_y == 0 for w in wins)


def test_default_stride_is_chip():
    g = make_grid(70, 70, 32)
    assert (g.stride_x, g.stride_y) == (32, 32)
    assert len(g) == len(g.xs) * len(g.ys) == 9


@pytest.mark.parametrize("bad", [(0, 32, 32), (10, 0, 5), (10, 5, 0)])
def test_rejects_non_positive(bad):
    with pytest.raises(ValueError):
        axis_origins(*bad)


@given(length=st.integers(1, 3000), chip=st.integers(1, 512), stride=st.integers(1, 512))
def test_axis_properties(length, chip, stride):
    o = axis_origins(length, chip, stride)
    assert o == sorted(set(o)), "sorted, no duplicates"
    assert o[0] == 0
    if length >= chip:
        assert all(0 <= x <= length - chip for x in o), "inside bounds"
        assert o[-1] == length - chip, "last chip ends on the edge"
        assert all(b - a <= stride for a, b in itertools.pairwise(o)), "steps never exceed the stride"
        assert o[:-1] == list(range(0, length - chip, stride)), "regular origins 0, s, 2s, ..."
        if stride <= chip:  # geoInfer reaches the edge only when tiles overlap or touch
            assert o == geoinfer_origins(length, chip, stride)
    else:
        assert o == [0]


@settings(deadline=None, max_examples=150)
@given(
    w=st.integers(1, 160), h=st.integers(1, 160), chip=st.integers(4, 96), sx=st.integers(1, 96), sy=st.integers(1, 96)
)
def test_grid_covers_every_pixel_when_stride_fits(w, h, chip, sx, sy):
    sx, sy = max(1, min(sx, chip), chip // 8), max(1, min(sy, chip), chip // 8)
    g = make_grid(w, h, chip, sx, sy)
    cover = np.zeros((h, w), dtype=np.int32)
    seen = set()
    for win in g:
        assert (win.xoff, win.yoff) not in seen
        seen.add((win.xoff, win.yoff))
        assert win.width + win.pad_x == chip and win.height + win.pad_y == chip
        assert win.xoff + win.width <= w and win.yoff + win.height <= h
        cover[win.yoff : win.yoff + win.height, win.xoff : win.xoff + win.width] += 1
    assert cover.min() >= 1
    assert len(seen) == len(g)
