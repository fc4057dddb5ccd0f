"""Landmark accuracy after fitting (issue: mean error <= 3% of the inter-ocular distance).

For each sample photo: dlib's 68 landmarks vs the projected 68 landmark vertices of the fitted
head; the error is the mean point distance divided by the outer-eye-corner distance (iBUG
36-45, the 300-W normalisation). Prints a table and writes benchmarks/results/landmarks.txt.

    python benchmarks/landmark_accuracy.py [PHOTO ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from report import publish

from ganfit.fit.reconstruct import Reconstructor
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo

TARGET = 0.03
REGIONS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48), "mouth": range(48, 68)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path)
    args = parser.parse_args()
    photos = args.photos or [sample_photo("grace_hopper"), sample_photo("astronaut")]
    reconstructor = Reconstructor()
    header = f"{'photo':<22} | {'error/IOD':>9} | " + " | ".join(f"{r:>6}" for r in REGIONS) + f" | {'IOD px':>6} | {'fit s':>5} | pass"
    lines = [f"landmark error after fitting (target <= {TARGET:.0%} of the outer-eye-corner distance)", header, "-" * len(header)]
    ok = True
    errors: list[float] = []
    for path in photos:
        photo = load_photo(path)
        t0 = time.perf_counter()
        face, fit = reconstructor.fit_landmark_stage(photo)
        seconds = time.perf_counter() - t0
        dist = (fit.projected[0].cpu() - torch.as_tensor(face.landmarks)).norm(dim=-1) / face.interocular
        error = float(dist.mean())
        regions = " | ".join(f"{float(dist[list(idx)].mean()):6.2%}" for idx in REGIONS.values())
        errors.append(error)
        passed = error <= TARGET
        ok &= passed
        lines.append(f"{path.name[:22]:<22} | {error:9.2%} | {regions} | {face.interocular:6.1f} | {seconds:5.2f} | {'yes' if passed else 'NO'}")
    if len(errors) > 1:
        lines.append(f"{'mean of ' + str(len(errors)) + ' photos':<22} | {sum(errors) / len(errors):9.2%} | worst {max(errors):.2%}")
    publish("landmarks", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
