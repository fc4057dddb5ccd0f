"""How many CPU threads the engine's PyTorch uses, chosen once per process (issue 18).

Torch's default, one OpenMP thread per core with spin-waiting workers, collapses when another
program wants a core too: on the project's 2-core CPU a Default fit took 28-65 s beside one
busy process (and 287-305 s inside Blender under load) instead of 6-8 s, because every
parallel region waits for a worker the kernel has descheduled. With one thread the same fit
takes 8 s quiet and 8 s beside a busy process (``benchmarks/bench_busy_cpu.py``). So:

- ``GANFIT_THREADS=N`` (a whole number >= 1) is used as it is;
- else an ``OMP_NUM_THREADS`` the user set is respected (torch reads it itself);
- else fewer than 4 usable cores get 1 thread, more get half of them, so Blender and one other
  busy program each keep a core.

``engine_environment`` puts the choice (and passive OpenMP waiting) into ``os.environ`` before
torch is imported, so the OpenMP pool and any worker processes start with it; ``apply_threads``
sets torch's count. The count is process-global by nature: both are no-ops after the first call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .errors import GanfitError

__all__ = ["ENV_VAR", "ThreadChoice", "apply_threads", "choose_threads", "engine_environment", "usable_cores"]

log = logging.getLogger(__name__)

#: The override: the number of torch threads to use.
ENV_VAR = "GANFIT_THREADS"

#: Below this many usable cores the engine uses one thread.
MIN_CORES_FOR_PARALLEL = 4

_applied: ThreadChoice | None = None
_environment: ThreadChoice | None = None  # what engine_environment put into os.environ


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and why (``ganfit info`` and the log show both)."""

    threads: int
    reason: str


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _whole_number(name: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise GanfitError(f"{name}={text!r} is not a thread count; set it to a whole number of at least 1 or unset it")
    return value


def choose_threads(environ: dict[str, str] | None = None, cores: int | None = None) -> ThreadChoice:
    """The policy of the module docstring; pure for a given ``environ`` and ``cores``."""
    if environ is None and _environment is not None:
        return _environment  # os.environ now holds our own choice, not the user's
    env = os.environ if environ is None else environ
    override = env.get(ENV_VAR, "").strip()
    if override:
        return ThreadChoice(_whole_number(ENV_VAR, override), f"${ENV_VAR}")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:
        return ThreadChoice(_whole_number("OMP_NUM_THREADS", omp), "$OMP_NUM_THREADS")
    cores = usable_cores() if cores is None else cores
    if cores < MIN_CORES_FOR_PARALLEL:
        return ThreadChoice(1, f"{cores} cores: 1 thread keeps a core free for Blender")
    return ThreadChoice(cores // 2, f"half of {cores} cores")


def engine_environment() -> ThreadChoice:
    """Before torch is imported: put the chosen count into ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` and make idle OpenMP workers sleep (``OMP_WAIT_POLICY=PASSIVE``)
    unless the user set them, so this process and its children start with the policy."""
    global _environment
    if _environment is None:
        choice = choose_threads()
        for name, value in (("OMP_NUM_THREADS", str(choice.threads)), ("MKL_NUM_THREADS", str(choice.threads)),
                            ("OMP_WAIT_POLICY", "PASSIVE")):
            os.environ.setdefault(name, value)
        _environment = choice
    return _environment


def apply_threads() -> ThreadChoice:
    """Set torch's intra-op thread count by the policy, once per process; the choice made."""
    global _applied
    if _applied is not None:
        return _applied
    import torch

    choice = choose_threads()
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _applied = choice
    log.info("torch uses %d CPU thread(s) (%s)", choice.threads, choice.reason)
    return choice
