"""Progress reporting shared by the CLI progress bar and the serve protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one stage; ``losses`` holds the named loss terms of that step."""

    stage: str  # "detect", "landmarks", "lighting", "texture", "write"
    step: int  # 1-based
    total: int
    losses: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: report nothing."""
