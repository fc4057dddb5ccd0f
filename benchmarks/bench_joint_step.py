"""Time of one full-objective step (issue 4: at most 150 ms on the 2-core CPU at 224x224).

A step is everything ``fit_joint`` does per iteration for one photo: the shape model, the
photo-view render and the random-pose render at the render size (forward and backward), both
chips, the identity network on both (descriptors and content activations), all losses, Adam.
Fits grace_hopper's stage 1 first, then times the default number of joint steps and reports the
median step time, plus the whole reconstruction time with default settings.

    python benchmarks/bench_joint_step.py [--device cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from report import publish

from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo

TARGET_MS = 150.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="joint steps to time (default: the default step count)")
    args = parser.parse_args()
    settings = FitSettings(device=args.device)
    if args.steps:
        settings = replace(settings, joint=replace(settings.joint, steps=args.steps))
    reconstructor = Reconstructor(settings)
    photo = load_photo(sample_photo("grace_hopper"))
    reconstructor.reconstruct_photo(photo)  # warm-up: loads the networks, packs weights

    stamps: dict[str, list[float]] = {}

    def progress(event) -> None:
        if event.stage == "fitting" and reconstructor.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.setdefault(event.stage, []).append(time.perf_counter())

    started = time.perf_counter()
    reconstructor.reconstruct_photo(photo, progress)
    total = time.perf_counter() - started
    steps = np.diff(stamps["fitting"]) * 1000
    joint = settings.joint
    median = float(np.median(steps))
    lines = [
        f"full-objective step on grace_hopper, render {joint.render_size}x{joint.render_size}, device {reconstructor.device}, "
        f"torch threads {torch.get_num_threads()}",
        f"median {median:.1f} ms, p10 {np.percentile(steps, 10):.1f} ms, p90 {np.percentile(steps, 90):.1f} ms "
        f"over {len(steps)} steps (target <= {TARGET_MS:.0f} ms): {'pass' if median <= TARGET_MS else 'FAIL'}",
        f"default fit: {settings.landmark.steps} landmark steps + {settings.appearance.steps} lighting steps + "
        f"{joint.steps} full-objective steps; whole reconstruction {total:.1f} s "
        f"(full-objective stage {stamps['fitting'][-1] - stamps['lighting'][-1]:.1f} s)",
    ]
    publish("joint_step", lines)
    return 0 if median <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
