"""Seeded train/validation splits of the exported chips.

Random: a permutation of the chips. Spatial blocks: chips are grouped by the square block
of `block` pixels holding their origin and whole blocks go to validation, which keeps
neighbouring (overlapping, correlated) chips on the same side of the split.
"""

from __future__ import annotations

import numpy as np

from .errors import GeoSegError

SPLIT_METHODS = ("random", "blocks")


def _n_val(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


# Complexity kept: the three split methods (random, block, stratified) share the counting and the guarantees
# (at least one of each); a branch per method.
def split_chips(origins: list[tuple[int, int]], fraction: float, method: str, seed: int, block: int) -> list[str]:  # noqa: C901
    """'train' or 'validation' for each chip origin (xoff, yoff)."""
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
    if method != "blocks":
        raise GeoSegError(f"Unknown split method '{method}' (use one of {', '.join(SPLIT_METHODS)}).")
    if block < 1:
        raise GeoSegError(f"BLOCK_SIZE must be positive (got {block}).")
    keys = [(y // block, x // block) for x, y in origins]
    blocks = sorted(set(keys))
    if len(blocks) < 2:
        raise GeoSegError(
            f"The spatial-block split needs at least 2 blocks, but all chips fall in one "
            f"{block}-pixel block; use a smaller BLOCK_SIZE or the random split."
        )
    members: dict[tuple[int, int], list[int]] = {b: [] for b in blocks}
    for i, k in enumerate(keys):
        members[k].append(i)
    taken = 0
    chosen: list[tuple[int, int]] = []
    for bi in rng.permutation(len(blocks)):
        size = len(members[blocks[bi]])
        if taken + size < n and abs(taken + size - target) < abs(taken - target):
            chosen.append(blocks[bi])
            taken += size
    if not chosen:  # every block overshoots: take the smallest one that leaves training chips
        smallest = min(blocks, key=lambda b: len(members[b]))
        if len(members[smallest]) < n:
            chosen.append(smallest)
    for b in chosen:
        for i in members[b]:
            labels[i] = "validation"
    return labels
