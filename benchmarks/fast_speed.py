"""Fast-GANFit's speed (issue 19): seconds per photo with the models loaded and the result folder
written, broken down by stage, and the batched throughput of ``reconstruct --each --mode fast``.

    python benchmarks/fast_speed.py [--photos 20] [--batch-photos 48]

Photos: held-out UTKFace photos (the project's split, never trained on) in the fixed hash
order; the public sample photos are timed separately since they are larger. The target is
0.2 s per photo on the project's 2-core CPU. Threads follow the engine's rule
(``ganfit.threads``: one thread on fewer than 4 cores, or ``GANFIT_THREADS``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ganfit.errors import GanfitError
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.io.images import load_photo
from ganfit.io.result import write_result
from ganfit.io.samples import sample_photo
from ganfit.texture.dataset import OBJECTIVE_TEST_PHOTOS, processing_order
from ganfit.train.regressor import RegressorTrainConfig, list_photos, split_photos

UTKFACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface" / "crop_part1"
STAGES = ("detection", "landmarks", "identity network", "regression", "texture", "writing")
TARGET_SECONDS = 0.2


def held_out_photos(count: int) -> list[Path]:
    """The first ``count`` held-out UTKFace photos in the project's hash order (the identity
    benchmark's 20 excluded: they tune settings)."""
    if not UTKFACE.is_dir():
        print(f"{UTKFACE} is not here: timing the sample photos only", file=sys.stderr)
        return []
    _, held = split_photos(list_photos(UTKFACE), RegressorTrainConfig(out="").held_out)
    chosen = sorted((p for p in held if p.name not in OBJECTIVE_TEST_PHOTOS), key=lambda p: processing_order(p.name))
    return chosen[:count]


def time_one_by_one(reconstructor: Reconstructor, paths: list[Path], out: Path) -> list[dict[str, float]]:
    """Each photo on its own, as ``ganfit reconstruct PHOTO -o OUT --mode fast`` runs it."""
    rows = []
    for path in paths:
        photo = load_photo(path)
        started = time.perf_counter()
        try:
            result = reconstructor.reconstruct_photos([photo])
        except GanfitError as exc:
            print(f"  {path.name}: skipped ({exc})", file=sys.stderr)
            continue
        written = time.perf_counter()
        write_result(result, out / path.stem, force=True)
        finished = time.perf_counter()
        row = {stage: reconstructor.timings.get(stage, 0.0) for stage in STAGES}
        row["writing"] = finished - written
        row["total"] = finished - started
        rows.append(row)
    return rows


def time_batched(reconstructor: Reconstructor, paths: list[Path], out: Path, batch: int = 16) -> tuple[int, float]:
    """``--each``'s path: photos loaded, regressed in batches, each result written."""
    started = time.perf_counter()
    done = 0
    for first in range(0, len(paths), batch):
        chunk = paths[first:first + batch]
        for path, result in zip(chunk, reconstructor.reconstruct_each([load_photo(p) for p in chunk])):
            if not isinstance(result, GanfitError):
                write_result(result, out / f"batch-{path.stem}", force=True)
                done += 1
    return done, time.perf_counter() - started


def report(label: str, rows: list[dict[str, float]]) -> float:
    mean = {key: float(np.mean([r[key] for r in rows])) for key in (*STAGES, "total")}
    other = mean["total"] - sum(mean[s] for s in STAGES)
    parts = ", ".join(f"{stage} {1000 * mean[stage]:.0f}" for stage in STAGES)
    print(f"{label}: {mean['total']:.3f} s per photo over {len(rows)} photos "
          f"(median {np.median([r['total'] for r in rows]):.3f} s); ms: {parts}, other {1000 * other:.0f}")
    return mean["total"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20, help="held-out UTKFace photos timed one by one")
    parser.add_argument("--batch-photos", type=int, default=48, help="photos for the batched throughput")
    parser.add_argument("--regressor", default=None, help="regressor weights (default: the shipped ones)")
    args = parser.parse_args()

    reconstructor = Reconstructor(replace(FitSettings(), mode="fast", regressor=args.regressor))
    paths = held_out_photos(max(args.photos, args.batch_photos) + 1)
    out = Path(tempfile.mkdtemp(prefix="ganfit-fast-speed-"))
    try:
        samples = [sample_photo(name) for name in ("grace_hopper", "astronaut", "two_faces")]
        time_one_by_one(reconstructor, (paths or samples)[:1], out)  # warm-up: loads and packs the networks
        mean = report("UTKFace held-out (200 px)", time_one_by_one(reconstructor, paths[1:args.photos + 1], out)) \
            if paths else None
        sample_mean = report("sample photos (up to 1024 x 600 px)", time_one_by_one(reconstructor, samples, out))
        mean = sample_mean if mean is None else mean
        done, seconds = time_batched(reconstructor, paths[1:args.batch_photos + 1] or samples * 4, out)
        print(f"batched (--each --mode fast, batches of 16, results written): {done} photos in {seconds:.1f} s, "
              f"{done / seconds:.2f} photos/s")
        print(f"target: at most {TARGET_SECONDS} s per photo: {'met' if mean <= TARGET_SECONDS else 'NOT met'}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
