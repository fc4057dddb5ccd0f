"""The engine's CPU thread policy (ganfit.threads, issue 18): one thread on small CPUs, half the
cores on larger ones, overrides respected, and what ``ganfit serve`` and ``ganfit info`` apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ganfit.errors import GanfitError
from ganfit.threads import ENV_VAR, choose_threads


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (16, 8)])
def test_policy_by_core_count(cores: int, threads: int) -> None:
    assert choose_threads({}, cores=cores).threads == threads


def test_overrides() -> None:
    assert choose_threads({ENV_VAR: "3"}, cores=2) == choose_threads({ENV_VAR: " 3 "}, cores=16)
    assert choose_threads({ENV_VAR: "3"}, cores=2).threads == 3
    assert choose_threads({"OMP_NUM_THREADS": "2"}, cores=2).threads == 2
    assert choose_threads({ENV_VAR: "1", "OMP_NUM_THREADS": "4"}, cores=8).threads == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_override_is_one_line_with_what_to_do(value: str) -> None:
    with pytest.raises(GanfitError, match=f"{ENV_VAR}=.*whole number of at least 1 or unset it") as caught:
        choose_threads({ENV_VAR: value}, cores=2)
    assert "\n" not in str(caught.value)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    return {**env, **extra}


def test_serve_environment_reaches_torch() -> None:
    """What `ganfit serve` does before torch loads: torch starts with the policy's count and
    passive OpenMP waiting, and child processes inherit both."""
    code = (
        "import json, os\n"
        "from ganfit.threads import engine_environment, apply_threads, choose_threads\n"
        "choice = engine_environment()\n"
        "import torch\n"
        "first = torch.get_num_threads()\n"
        "apply_threads()\n"
        "print(json.dumps({'expected': choose_threads(dict(os.environ)).threads, 'chosen': choice.threads,\n"
        "  'torch': first, 'after': torch.get_num_threads(), 'omp': os.environ['OMP_NUM_THREADS'],\n"
        "  'wait': os.environ['OMP_WAIT_POLICY']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["torch"] == got["after"] == got["chosen"] == got["expected"] == int(got["omp"])
    assert got["wait"] == "PASSIVE"
    cores = len(os.sched_getaffinity(0))
    assert got["chosen"] == (1 if cores < 4 else cores // 2)


def test_override_reaches_info() -> None:
    code = "from ganfit.cli import info_dict; print(info_dict()['devices'][0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_clean_env(**{ENV_VAR: "3"}), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "3 thread(s)" in out.stdout and ENV_VAR in out.stdout
