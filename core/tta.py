"""Test-time augmentation: the views of a batch of square tiles (flips and quarter turns), each undone
on the model's output, and the mean of the views' class probabilities.

TTA 1 uses the four flips (none, left-right, up-down, both = half turn); TTA 2 all eight symmetries
of the square (four quarter turns, each with and without a left-right flip). A view is
`rot90(flip(x), k)`; its undo is `flip(rot90(y, -k))`, so a model whose output is equivariant to
these moves gives the same probabilities with and without TTA. The views of a batch of B tiles go
through the model as one batch of B × V inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# TTA level (Processing enum index and core value) → (quarter turns, left-right flip) of each view
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),  # identity, left-right, up-down, both
    "all": tuple((k, f) for f in (False, True) for k in range(4)),
}


def view_count(level: str) -> int:
    return len(VIEWS[level])


def apply_view(x: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """The view of tiles [..., h, w]: flipped left-right (when `flip`), then turned `turns` quarter turns."""
    y = x[..., ::-1] if flip else x
    return np.rot90(y, turns, axes=(-2, -1))


def undo_view(y: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """The inverse of `apply_view` (on the model's output [..., classes, h, w])."""
    y = np.rot90(y, -turns, axes=(-2, -1))
    return y[..., ::-1] if flip else y


def with_views(
    x: np.ndarray,
    level: str,
    run: Callable[[np.ndarray], np.ndarray],
    to_probabilities: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The mean class probabilities [B, classes, h, w] of the views of tiles `x` [B, bands, h, w] (h = w),
    run as one batch of B × V inputs; `to_probabilities` turns the model's output into probabilities
    (softmax of logits, or nothing for a model that returns probabilities)."""
    views = VIEWS[level]
    if x.shape[-1] != x.shape[-2] and any(k % 2 for k, _ in views):
        raise ValueError("quarter turns need square tiles")
    n = len(x)
    out = run(np.ascontiguousarray(np.concatenate([apply_view(x, k, f) for k, f in views])))
    mean = np.zeros((n, *out.shape[1:]), dtype=np.float32)
    for i, (k, f) in enumerate(views):
        mean += undo_view(to_probabilities(out[i * n : (i + 1) * n]), k, f)
    mean /= len(views)
    return mean
