"""Progress reporting shared by the CLI progress bar and the serve protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one stage; ``losses`` holds the named loss terms of that step."""

    stage: str  # "detect", "landmarks", "lighting", "texture", "write"
    step: int  # 1-based
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    # Now and then (every ``MESH_EVERY`` steps and at a stage's end) the current head in model
    # space, (V, 3) float32, with the expression applied: the add-on shows the mesh as it fits.
    vertices: np.ndarray | None = field(default=None, repr=False, compare=False)


#: How often, in steps, fitting stages attach the current mesh to a progress event.
MESH_EVERY = 25


ProgressFn = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: report nothing."""
