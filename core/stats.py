"""Streaming per-band statistics: each chip contributes (count, mean, M2) and the totals are
merged exactly (Chan et al.), so the dataset mean/std can be taken over any subset of chips
(the training split) without a second pass over the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Per-band pixel count, mean and sum of squared deviations of one chip.

    Plain floats, not numpy arrays: thousands of long-lived tiny array buffers interleaved
    with each chip's large temporaries fragment the C heap, so memory grew with the number
    of chips (measured: ~170 kB per chip); Python floats live in Python's own arenas.
    """

    count: int
    mean: tuple[float, ...]
    m2: tuple[float, ...]

    @staticmethod
    def of(pixels: np.ndarray, valid: np.ndarray) -> Moments:
        """`pixels` [bands, h, w]; only `valid` [h, w] pixels count."""
        bands = pixels.shape[0]
        x = pixels.reshape(bands, -1) if valid.all() else pixels[:, valid]  # no masked copy when all valid
        n = x.shape[1]
        if n == 0:
            z = (0.0,) * bands
            return Moments(0, z, z)
        mean = x.sum(axis=1, dtype=np.float64) / n
        d = x.astype(np.float64)
        d -= mean[:, None]
        m2 = np.einsum("ij,ij->i", d, d)  # 20× faster than ((x - mean) ** 2).sum(): export spent half its time here
        return Moments(n, tuple(mean.tolist()), tuple(m2.tolist()))

    def to_json(self) -> dict:
        """Exact round trip through JSON (Python writes floats as their shortest exact repr)."""
        return {"count": self.count, "mean": list(self.mean), "m2": list(self.m2)}

    @staticmethod
    def from_json(d: dict) -> Moments:
        return Moments(int(d["count"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["m2"]))


def combine(parts: list[Moments], bands: int) -> Moments:
    """The moments of the union of all parts (Chan et al.): the sums of many chips, or of many scenes."""
    parts = [p for p in parts if p.count]
    if not parts:
        z = (0.0,) * bands
        return Moments(0, z, z)
    n = np.array([p.count for p in parts], dtype=np.float64)
    means = np.array([p.mean for p in parts])
    total = n.sum()
    mean = (n[:, None] * means).sum(axis=0) / total
    m2 = np.array([p.m2 for p in parts]).sum(axis=0) + (n[:, None] * (means - mean) ** 2).sum(axis=0)
    return Moments(int(total), tuple(mean.tolist()), tuple(m2.tolist()))


def merge(parts: list[Moments], bands: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and population std per band over all parts, and the pixel count."""
    m = combine(parts, bands)
    if not m.count:
        return np.zeros(bands), np.ones(bands), 0
    return np.array(m.mean), np.sqrt(np.array(m.m2) / m.count), m.count
