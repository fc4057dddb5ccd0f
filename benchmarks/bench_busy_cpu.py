"""A Default fit on a quiet CPU and beside one other CPU-bound process (issue 18, item 4: the
second at most 2.5 times the first).

Each fit runs in a fresh process, as the add-on's engine does: grace_hopper with Default
settings on the CPU, timed from the photo to the result (models already loaded, the identity
network loads during the fit as on the add-on's first click). The busy neighbour is a Python
busy loop. Three thread set-ups are compared: the engine's policy (``ganfit.threads``, as
``ganfit serve`` applies it), a thread per core with the engine's passive OpenMP waiting
(``GANFIT_THREADS`` = the core count), and torch's default (a spin-waiting OpenMP thread per
core). Each cell shows the fastest of ``--repeat`` fits: other programs on the machine only
add time, and the load average before and after is printed to show how busy it was.

    python benchmarks/bench_busy_cpu.py [--repeat N] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from report import publish

TARGET_RATIO = 2.5


def child(torch_default: bool) -> int:
    """One fit in this process; prints its time as JSON on stdout's last line."""
    if not torch_default:
        from ganfit.threads import engine_environment

        engine_environment()  # what `ganfit serve` does before torch loads
    import torch

    if torch_default:
        os.environ["GANFIT_THREADS"] = str(torch.get_num_threads())  # keep torch's own count
    from ganfit.fit.reconstruct import Reconstructor
    from ganfit.fit.settings import FitSettings
    from ganfit.io.images import load_photo
    from ganfit.io.samples import sample_photo

    reconstructor = Reconstructor(FitSettings(device="cpu"))
    photo = load_photo(sample_photo("grace_hopper"))
    started = time.perf_counter()
    reconstructor.reconstruct_photo(photo)
    seconds = time.perf_counter() - started
    print(json.dumps({"threads": torch.get_num_threads(), "seconds": seconds,
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)")}))
    return 0


def run_fit(torch_default: bool, threads: int | None, busy: bool, timeout: float) -> tuple[float | None, dict]:
    """Seconds of one fit in a child process (None past ``timeout``), beside a busy loop if asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("GANFIT_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if threads is not None:
        env["GANFIT_THREADS"] = str(threads)
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        command = [sys.executable, __file__, "--child"] + (["--torch-default"] if torch_default else [])
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, {}
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if done.returncode != 0:
        raise SystemExit(f"the fit failed:\n{done.stderr[-2000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return float(info["seconds"]), info


def _seconds(values: list[float | None], timeout: float) -> tuple[str, float]:
    if any(v is None for v in values):
        return f">{timeout:.0f}", float("inf")
    value = min(v for v in values if v is not None)
    return f"{value:.1f}", value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="fits per cell; the fastest is shown (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a fit counts as collapsed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-default", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.torch_default)

    load_before = os.getloadavg()
    rows = []
    verdict = 0
    from ganfit.threads import usable_cores

    cores = usable_cores()
    for name, torch_default, threads in (("engine policy", False, None), ("a thread/core", False, cores),
                                         ("torch default", True, None)):
        quiet: list[float | None] = []
        busy: list[float | None] = []
        info: dict = {}
        for _ in range(args.repeat):
            seconds, got = run_fit(torch_default, threads, False, args.timeout)
            quiet.append(seconds)
            info = got or info
            seconds, got = run_fit(torch_default, threads, True, args.timeout)
            busy.append(seconds)
            info = got or info
        quiet_text, quiet_s = _seconds(quiet, args.timeout)
        busy_text, busy_s = _seconds(busy, args.timeout)
        ratio = busy_s / quiet_s
        ok = ratio <= TARGET_RATIO
        if not torch_default and not ok:
            verdict = 1
        rows.append(f"{name:14s} {info.get('threads', '?'):>7} {info.get('wait_policy', '?'):>17} {quiet_text:>9} "
                    f"{busy_text:>9} {ratio:>6.2f} {'pass' if ok else 'FAIL'}")
    load_after = os.getloadavg()
    lines = [
        f"Default fit of grace_hopper on the CPU ({cores} usable cores), quiet and beside one busy-loop process; "
        f"fastest of {args.repeat} fit(s) per cell, target busy/quiet <= {TARGET_RATIO} (engine policy)",
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (other programs on the machine add noise)",
        f"{'set-up':14s} {'threads':>7} {'OMP_WAIT_POLICY':>17} {'quiet s':>9} {'busy s':>9} {'ratio':>6}",
        *rows,
    ]
    publish("busy_cpu", lines)
    return verdict


if __name__ == "__main__":
    sys.exit(main())
