"""What a texture size costs (issue 17, item 5): seconds per reconstruction of grace_hopper in fast
mode with the photo texture and with the blend, at each size, and the blend's extra.

    GANFIT_THREADS=1 python benchmarks/texture_sizes.py [--sizes 512,1024,2048] [--repeats 2]

Each configuration runs once to warm up (models loaded, layouts cached per size) and then
``--repeats`` times; the figure is the fastest. The "texture" column is the reconstructor's own
timing of its texture step (projection, segmentation, blend). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from ganfit.errors import GanfitError
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.io.samples import sample_photo

SOURCES = ("photo", "blend")


def seconds(reconstructor: Reconstructor, photo: str, repeats: int) -> tuple[float, float]:
    """The fastest whole reconstruction and its texture step, after one warm-up call."""
    path = sample_photo(photo)
    reconstructor.reconstruct(path)
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        started = time.perf_counter()
        reconstructor.reconstruct(path)
        total = time.perf_counter() - started
        if total < best[0]:
            best = (total, reconstructor.timings.get("texture", 0.0))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024,2048", help="texture sizes, comma-separated (up to 4096)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--photo", default="grace_hopper")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(not 64 <= s <= 4096 for s in sizes):
        print(f"texture_sizes: --sizes {args.sizes}: expected whole numbers from 64 to 4096 such as 512,1024,2048",
              file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"texture_sizes: --repeats {args.repeats}: expected at least 1", file=sys.stderr)
        return 2
    if os.environ.get("GANFIT_THREADS") != "1":
        print("texture_sizes: note: GANFIT_THREADS is not 1", file=sys.stderr)
    fast = FitSettings(mode="fast")
    reconstructor = Reconstructor(fast)
    print(f"{args.photo}, fast mode, GANFIT_THREADS={os.environ.get('GANFIT_THREADS', 'unset')}; "
          f"fastest of {args.repeats} after a warm-up (seconds: whole reconstruction / texture step)")
    print(f"{'size':>5} | {'photo':>13} | {'blend':>13} | blend's extra")
    for size in sizes:
        row = {}
        for source in SOURCES:
            reconstructor.settings = replace(fast, appearance=replace(fast.appearance, texture_size=size,
                                                                       texture_source=source))
            try:
                row[source] = seconds(reconstructor, args.photo, args.repeats)
            except GanfitError as exc:
                print(f"texture_sizes: {size} px {source}: {exc}", file=sys.stderr)
                return 1
        (pt, ptex), (bt, btex) = row["photo"], row["blend"]
        print(f"{size:>5} | {pt:5.2f} / {ptex:5.2f} | {bt:5.2f} / {btex:5.2f} | +{bt - pt:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
