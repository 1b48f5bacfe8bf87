"""Seeded train/validation splits of the exported chips.

Random: a permutation of the chips. Spatial blocks: chips are grouped by the square block
of `block` pixels holding their origin and whole blocks go to validation, which keeps
neighbouring (overlapping, correlated) chips on the same side of the split. Per scene: whole
scenes (the rasters of a multi-scene chips folder, see APPEND) go to validation.
"""

from __future__ import annotations

import numpy as np

from .errors import GeoSegError

SPLIT_METHODS = ("random", "blocks", "scenes")


def _n_val(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def split_chips(
    origins: list[tuple[int, int]],
    fraction: float,
    method: str,
    seed: int,
    block: int,
    scenes: list[str] | None = None,
) -> list[str]:
    """'train' or 'validation' for each chip origin (xoff, yoff); `scenes`: each chip's scene (method
    'scenes')."""
    if not 0 <= fraction < 1:
        raise GeoSegError(f"VALIDATION_FRACTION must be at least 0 and below 1 (got {fraction}).")
    n = len(origins)
    target = _n_val(n, fraction)
    labels = ["train"] * n
    if target == 0:
        return labels
    rng = np.random.default_rng(seed)
    if method == "random":
        for i in rng.permutation(n)[:target]:
            labels[i] = "validation"
        return labels
    if method == "scenes":
        keys: list = list(scenes) if scenes is not None else ["scene"] * n
        if len(set(keys)) < 2:
            raise GeoSegError(
                "The per-scene split needs at least 2 scenes, but all chips come from one; add scenes with "
                "APPEND, or use the random or spatial-block split.",
                param="SPLIT_METHOD",
            )
    elif method == "blocks":
        if block < 1:
            raise GeoSegError(f"BLOCK_SIZE must be positive (got {block}).")
        keys = [(y // block, x // block) for x, y in origins]
        if len(set(keys)) < 2:
            raise GeoSegError(
                f"The spatial-block split needs at least 2 blocks, but all chips fall in one "
                f"{block}-pixel block; use a smaller BLOCK_SIZE or the random split."
            )
    else:
        raise GeoSegError(f"Unknown split method '{method}' (use one of {', '.join(SPLIT_METHODS)}).")
    for i in _whole_groups(keys, target, rng):
        labels[i] = "validation"
    return labels


def _whole_groups(keys: list, target: int, rng: np.random.Generator) -> list[int]:
    """Chips of whole groups (blocks, scenes) whose total comes closest to `target`, leaving at least one
    chip for training."""
    n = len(keys)
    groups = sorted(set(keys))
    members: dict = {g: [] for g in groups}
    for i, k in enumerate(keys):
        members[k].append(i)
    taken = 0
    chosen: list = []
    for gi in rng.permutation(len(groups)):
        size = len(members[groups[gi]])
        if taken + size < n and abs(taken + size - target) < abs(taken - target):
            chosen.append(groups[gi])
            taken += size
    if not chosen:  # every group overshoots: take the smallest one that leaves training chips
        smallest = min(groups, key=lambda g: len(members[g]))
        if len(members[smallest]) < n:
            chosen.append(smallest)
    return [i for g in chosen for i in members[g]]
