"""Path containment: a path read from a data file (chips.csv, a manifest) may only name a file
inside the folder it belongs to.

A chips folder is data that can come from anyone; a row `../../../../etc/passwd`, an absolute
path or a symbolic link pointing out of the folder must not make GeoSeg read (or train on)
files elsewhere. `inside` is the one check: every place that joins a folder with a path read
from a file goes through it.
"""

from __future__ import annotations

import os

from .errors import GeoSegError


def inside(folder: str, relative: str, where: str = "", param: str | None = None) -> str:
    """`folder`/`relative`, resolved (symbolic links followed), when it lies inside `folder`;
    otherwise GeoSegError naming `where` (e.g. "CHIPS: chips.csv row 3, image").

    Refused: empty paths, absolute paths (also Windows drive and UNC paths), and any path whose
    resolved form leaves the resolved folder (`..` components, links pointing out)."""
    label = f"{where}: " if where else ""
    if not isinstance(relative, str) or not relative.strip():
        raise GeoSegError(f"{label}the path is empty.", param=param)
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise GeoSegError(
            f"{label}an absolute path ('{relative}'); paths must be relative to {folder} and stay " "inside it.",
            param=param,
        )
    root = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(root, relative.replace("\\", "/")))
    if os.path.commonpath([root, resolved]) != root or resolved == root:
        raise GeoSegError(
            f"{label}'{relative}' leads outside {folder} (to {resolved}); paths must stay inside " "the folder.",
            param=param,
        )
    return resolved
