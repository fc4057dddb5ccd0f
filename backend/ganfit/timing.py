"""Wall-clock time per stage of a reconstruction, for speed breakdowns (benchmarks/fast_speed.py)
and the log. ``Timings`` adds up the seconds spent under each name."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Timings"]


class Timings(dict[str, float]):
    """{stage: seconds}, summed over every ``timed(stage)`` block."""

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - started
