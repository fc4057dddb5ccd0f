"""The paper's Table I analogue (issue 19): GANFit, Fast-GANFit and GANFit++ on the same photos.

For each mode and photo: the landmark error (``result.landmark_error_iod``: mean landmark
distance / outer-eye-corner distance), dlib's descriptor distance from the photo to the overlay
and to the head turned 25 degrees (``identity_distance.fit_and_judge``: dlib's own C++ network
judges; below 0.6 dlib calls two faces the same person), and the seconds of the reconstruction
with the models already loaded (``Reconstructor.reconstruct_photo`` on a loaded photo, no result
folder written; run with ``GANFIT_THREADS=1`` for one thread).

Photos:

- UTKFace (``../shared/data/utkface/crop_part1``): photos held out by the project's rule
  (``ganfit.texture.dataset.held_out`` at the regressor trainer's fraction, never trained on)
  minus the 20 ``OBJECTIVE_TEST_PHOTOS`` (those tuned the objective), in the project's fixed hash
  order (``processing_order``); the first N in which a usable face is found (the skipped ones are
  counted and named);
- the public sample photos grace_hopper, astronaut and two_faces (``ganfit.io.samples``; its
  largest face), reported as a row group of their own.

    GANFIT_THREADS=1 python benchmarks/table1.py [--modes ganfit,fast,ganfit++] [--photos 100]
        [--markdown docs/fast-ganfit-results.md] [--regressor WEIGHTS.npz]

Each (mode, photo) is cached under benchmarks/results/table1-cache/, keyed by the photo file,
the mode's settings and, for fast and ganfit++, the SHA-256 of the regressor weights: after the
weights change, ``--modes fast,ganfit++`` re-runs only those and the table still shows the
cached GANFit row. ``--no-cache`` ignores (and overwrites) the cache. Prints the table, writes
benchmarks/results/table1.txt and table1.json (every photo's figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from identity_distance import SAME_PERSON, TURN_DEGREES, UTKFACE, DlibJudge, fit_and_judge
from report import RESULTS, file_sha256, publish, replace_block

from ganfit.errors import GanfitError, InputImageError
from ganfit.fit.reconstruct import Reconstructor
from ganfit.fit.settings import FitSettings
from ganfit.io.images import load_photo
from ganfit.io.samples import sample_photo
from ganfit.regress.weights import SHIPPED_REGRESSOR
from ganfit.settings import build_settings
from ganfit.texture.dataset import OBJECTIVE_TEST_PHOTOS, held_out, processing_order
from ganfit.train.regressor import RegressorTrainConfig

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ganfit", "fast", "ganfit++")
LABELS = {"ganfit": "GANFit", "fast": "Fast-GANFit", "ganfit++": "GANFit++"}
SAMPLES = ("grace_hopper", "astronaut", "two_faces")
CACHE = RESULTS / "table1-cache"
#: Bump when what a cache entry holds or how it is measured changes.
CACHE_VERSION = 2
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------
# Photos


def held_out_photos(folder: Path, fraction: float) -> list[Path]:
    """UTKFace photos never trained on and never tuned on, in the project's fixed hash order."""
    if not folder.is_dir():
        raise GanfitError(f"{folder}: no such folder; UTKFace lives in ../shared/data/utkface/crop_part1")
    names = [p.name for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES]
    chosen = [n for n in names if held_out(n, fraction) and n not in OBJECTIVE_TEST_PHOTOS]
    return [folder / n for n in sorted(chosen, key=processing_order)]


# ---------------------------------------------------------------------------------------------
# Settings, weights and the cache


def mode_settings(mode: str, regressor: Path | None = None, **options: Any) -> FitSettings:
    """A mode's default settings as the command line builds them (ganfit++: its 20 steps)."""
    given = {"mode": mode, **options}
    if regressor is not None and mode != "ganfit":
        given["regressor"] = str(regressor)
    return build_settings({k: str(v) if k != "mode" and not isinstance(v, str) else v for k, v in given.items()}, "cli")


def regressor_file(settings: FitSettings) -> Path:
    return Path(settings.regressor) if settings.regressor else SHIPPED_REGRESSOR


def weights_hash(settings: FitSettings) -> str | None:
    """SHA-256 of the regressor weights a mode uses (None for GANFit, which uses none)."""
    if settings.mode == "ganfit":
        return None
    path = regressor_file(settings)
    if not path.is_file():
        raise GanfitError(f"{path}: regressor weights not found; train them (ganfit train-regressor) or give --regressor")
    return file_sha256(path)


#: Settings added after fits were cached, with the value that reproduces the older engine: at that
#: value they are left out of the cache key, so a new option does not throw away every cached fit.
ADDED_AT_DEFAULT: dict[tuple[str, str], object] = {("appearance", "texture_source"): "photo"}


def cache_key(settings: FitSettings, photo: Path, weights: str | None) -> str:
    """What a cached figure depends on: the photo file, the settings and the weights' hash
    (the weights' path is left out: the same file elsewhere gives the same figures)."""
    stat = photo.stat()
    described = {k: v for k, v in settings.to_dict().items() if k != "regressor"}
    for (group, name), default in ADDED_AT_DEFAULT.items():  # settings newer than the cache, at their default
        if described.get(group, {}).get(name) == default:
            described[group] = {k: v for k, v in described[group].items() if k != name}
    text = json.dumps({"version": CACHE_VERSION, "photo": photo.name, "size": stat.st_size,
                       "settings": described, "weights": weights}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_timed(reconstructor: Reconstructor) -> list[float]:
    """Make the reconstructor's next ``reconstruct_photo`` also record its process CPU seconds
    (in the returned list): with one thread that is the wall clock of a quiet machine, and it
    hardly moves when other programs share the CPU, which the wall clock does."""
    cpu = [float("nan")]
    original = type(reconstructor).reconstruct_photo

    def timed(photo: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return original(reconstructor, photo, *args, **kwargs)
        finally:
            cpu[0] = time.process_time() - started
            del reconstructor.reconstruct_photo  # back to the class's method

    reconstructor.reconstruct_photo = timed  # type: ignore[method-assign]
    return cpu


#: The commit this process runs (read once: other sessions commit while a long run goes on, and
#: a record must name the code that made it, not the code checked out when it was written).
COMMIT = git_commit()


class Runner:
    """Runs (mode, photo) fits with one loaded ``Reconstructor`` and dlib judge, through the cache."""

    def __init__(self, use_cache: bool = True, cache: Path = CACHE, device: str = "cpu") -> None:
        self.use_cache = use_cache
        self.cache = cache
        self.device = device
        self._reconstructor: Reconstructor | None = None
        self._judge: DlibJudge | None = None
        self._warm: set[tuple] = set()
        self.fresh = 0  # fits run (not from the cache)

    def _tools(self, settings: FitSettings) -> tuple[Reconstructor, DlibJudge]:
        if self._reconstructor is None:
            self._reconstructor = Reconstructor(settings)
            self._judge = DlibJudge()
        assert self._judge is not None
        self._reconstructor.settings = settings
        return self._reconstructor, self._judge

    def _warm_up(self, reconstructor: Reconstructor, settings: FitSettings, weights: str | None) -> None:
        """Load every model a mode uses before its first timed photo (seconds per photo are
        with the models loaded): the identity network, the regressor, and one short fit."""
        key = (settings.mode, settings.regressor)
        if key in self._warm:
            return
        reconstructor.identity_network  # noqa: B018 -- loads dlib's network
        if settings.mode != "ganfit":
            reconstructor._regressor = None  # settings.regressor may have changed
            reconstructor.regressor()
            if weights_hash(settings) != weights:  # the cache key must name the weights that ran
                raise GanfitError(f"{regressor_file(settings)} changed during the run; run the benchmark again")
        short = replace(settings, landmark=replace(settings.landmark, steps=2),
                        appearance=replace(settings.appearance, steps=2), joint=replace(settings.joint, steps=2))
        reconstructor.settings = short
        reconstructor.reconstruct_photo(load_photo(sample_photo("grace_hopper")))
        reconstructor.settings = settings
        self._warm.add(key)

    def fit(self, settings: FitSettings, photo: Path, weights: str | None) -> dict[str, Any]:
        """One photo's figures: from the cache, or fitted, judged and cached. A photo without a
        usable face gives {"skipped": reason}."""
        target = self.cache / settings.mode.replace("+", "p") / f"{photo.stem[:40]}-{cache_key(settings, photo, weights)}.json"
        if self.use_cache and target.is_file():
            return json.loads(target.read_text())
        reconstructor, judge = self._tools(settings)
        try:
            loaded = load_photo(photo, max_side=settings.max_photo_side)
            self._warm_up(reconstructor, settings, weights)
            cpu = cpu_timed(reconstructor)
            result, seconds, overlay, turned = fit_and_judge(reconstructor, judge, loaded, np.array(loaded.pixels))
            record: dict[str, Any] = {
                "photo": photo.name, "mode": settings.mode,
                "landmark_error_iod": float(result.landmark_error_iod),
                "overlay": overlay, "turned": turned, "seconds": seconds, "cpu_seconds": cpu[0],
                "stages": {k: round(v, 4) for k, v in reconstructor.timings.items()},
                "joint_total": [float(x) for x in result.losses.get("joint_total", [])],
                "faces_found": result.settings.get("faces_found"),
                "load_average": round(os.getloadavg()[0], 2),  # the CPU's business while it ran
            }
        except InputImageError as exc:
            record = {"photo": photo.name, "mode": settings.mode, "skipped": str(exc)}
        record.update({"weights_sha256": weights, "fit_steps": settings.joint.steps, "commit": COMMIT,
                       "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        self.fresh += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=1))
        return record


# ---------------------------------------------------------------------------------------------
# The table


def commits(records: Any) -> str:
    """The engine commits that fitted ``records`` (cached rows keep the commit that made them)."""
    return "/".join(sorted({r.get("commit", "?") for r in records}))


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in records]

    out: dict[str, float] = {"photos": len(records)}
    for key in ("landmark_error_iod", "overlay", "turned", "seconds", "cpu_seconds"):
        values = col(key)
        out[f"{key}_mean"] = statistics.mean(values)
        out[f"{key}_median"] = statistics.median(values)
    out["turned_same_person"] = sum(v < SAME_PERSON for v in col("turned"))
    return out


HEADER = (f"{'mode':<12} | {'photos':>6} | {'lmk err mean':>12} | {'median':>6} | {'overlay mean':>12} | {'median':>6} | "
          f"{'turned 25° mean':>15} | {'median':>6} | {'s/photo mean':>12} | {'median':>6} | {'CPU s mean':>10} | {'median':>6}")


def text_row(label: str, s: dict[str, float]) -> str:
    return (f"{label:<12} | {int(s['photos']):6d} | {s['landmark_error_iod_mean']:12.2%} | {s['landmark_error_iod_median']:6.2%} | "
            f"{s['overlay_mean']:12.3f} | {s['overlay_median']:6.3f} | {s['turned_mean']:15.3f} | {s['turned_median']:6.3f} | "
            f"{s['seconds_mean']:12.2f} | {s['seconds_median']:6.2f} | {s['cpu_seconds_mean']:10.2f} | {s['cpu_seconds_median']:6.2f}")


def markdown_rows(label: str, s: dict[str, float]) -> str:
    return (f"| {label} | {int(s['photos'])} | {s['landmark_error_iod_mean']:.2%} / {s['landmark_error_iod_median']:.2%} | "
            f"{s['overlay_mean']:.3f} / {s['overlay_median']:.3f} | {s['turned_mean']:.3f} / {s['turned_median']:.3f} | "
            f"{s['seconds_mean']:.2f} / {s['seconds_median']:.2f} | {s['cpu_seconds_mean']:.2f} / {s['cpu_seconds_median']:.2f} |")


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise GanfitError(f"--modes {text}: expected a comma-separated list of {', '.join(MODES)}")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to run (default all three); "
                        "the table also shows the other modes' cached rows for the same photos")
    parser.add_argument("--photos", type=int, default=100, help="held-out UTKFace photos with a face (default 100)")
    parser.add_argument("--no-samples", action="store_true", help="leave out the public sample photos")
    parser.add_argument("--regressor", type=Path, default=None, help="regressor weights (default: the shipped ones)")
    parser.add_argument("--held-out", type=float, default=RegressorTrainConfig.__dataclass_fields__["held_out"].default,
                        help="the held-out fraction of the trainer's split (default %(default)s, its default)")
    parser.add_argument("--data", type=Path, default=UTKFACE, help="UTKFace's crop_part1 folder")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the table here (between <!-- table1 --> markers if the file has them, else appended)")
    parser.add_argument("--json", type=Path, default=RESULTS / "table1.json", help="every photo's figures")
    parser.add_argument("--no-cache", action="store_true", help="fit the --modes run again (and refresh their cache); the other modes still show their cached rows")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        modes = parse_modes(args.modes)
        if args.photos < 1:
            raise GanfitError(f"--photos {args.photos}: expected a whole number of at least 1")
        if args.regressor is not None and not args.regressor.is_file():
            raise GanfitError(f"--regressor {args.regressor}: file not found")
        if os.environ.get("GANFIT_THREADS") != "1":
            print("table1: note: GANFIT_THREADS is not 1; the seconds are not the one-thread figures", file=sys.stderr)
        settings = {m: mode_settings(m, args.regressor, device=args.device) for m in MODES}
        weights = {m: weights_hash(settings[m]) if m != "ganfit" else None for m in MODES}
        candidates = held_out_photos(args.data, args.held_out)
    except GanfitError as exc:
        print(f"table1: {exc}", file=sys.stderr)
        return 2
    runner = Runner(use_cache=not args.no_cache)
    started = time.perf_counter()

    def cached_only(mode: str, photo: Path) -> dict[str, Any] | None:
        target = runner.cache / mode.replace("+", "p") / f"{photo.stem[:40]}-{cache_key(settings[mode], photo, weights[mode])}.json"
        # The modes not run keep their cached rows even with --no-cache (it refits the --modes
        # run): refreshing one mode must not drop the others from the table it writes.
        return json.loads(target.read_text()) if target.is_file() else None

    def collect(photos: list[Path], wanted: int | None, log: Callable[[str], None]) -> tuple[dict[str, list], list]:
        """Fit the photos in order until ``wanted`` have a usable face (all, if None)."""
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        skipped: list[tuple[str, str]] = []
        for photo in photos:
            if wanted is not None and len(rows[modes[0]]) >= wanted:
                break
            records: dict[str, dict[str, Any]] = {}
            for mode in MODES:
                record = runner.fit(settings[mode], photo, weights[mode]) if mode in modes else cached_only(mode, photo)
                if record is not None:
                    records[mode] = record
            reasons = {r["skipped"] for r in records.values() if "skipped" in r}
            if reasons:
                skipped.append((photo.name, sorted(reasons)[0]))
                log(f"  skip {photo.name}: {sorted(reasons)[0]}")
                continue
            for mode, record in records.items():
                rows[mode].append(record)
            log(f"  {photo.name[:30]:30s} " + "  ".join(
                f"{LABELS[m]}: lmk {r['landmark_error_iod']:.2%} ov {r['overlay']:.3f} tu {r['turned']:.3f} {r['seconds']:.2f}s"
                for m, r in records.items()))
        return rows, skipped

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say(f"table1: {len(candidates)} held-out UTKFace photos outside the 20 tuning photos; modes {', '.join(modes)}")
    utk, skipped = collect(candidates, args.photos, say)
    groups = [("UTKFace held out", utk)]
    sample_skipped: list[tuple[str, str]] = []
    if not args.no_samples:
        samples, sample_skipped = collect([sample_photo(n) for n in SAMPLES], None, say)
        groups.append(("sample photos", samples))
    if len(utk[modes[0]]) < args.photos:
        say(f"table1: only {len(utk[modes[0]])} held-out photos with a usable face (asked for {args.photos})")

    # A mode shown must cover the same photos as the modes run (cached rows of other photos are not shown).
    shown = [m for m in MODES if m in modes or all(len(g[m]) == len(g[modes[0]]) for _, g in groups)]
    hashes = {m: weights[m] for m in shown if weights[m]}
    lines = [
        f"Table I analogue (paper Table I): {len(utk[modes[0]])} held-out UTKFace photos (never trained or tuned on; "
        f"first in processing_order with a usable face, {len(skipped)} skipped) "
        f"and the sample photos {', '.join(SAMPLES)}",
        f"landmark error: mean distance / outer-eye-corner distance; overlay, turned {TURN_DEGREES:g}°: dlib descriptor "
        f"distance to the photo (same person below {SAME_PERSON}); s/photo: reconstruction wall clock, models loaded, "
        f"{os.environ.get('GANFIT_THREADS', 'default')} thread(s), {platform.processor() or platform.machine()}; "
        f"CPU s: its process CPU time (the wall clock of a quiet machine with one thread); mean 1-minute load average "
        f"while fitting {statistics.mean(r.get('load_average', 0) for g in groups for m in shown for r in g[1][m]):.1f}",
        "regressor weights: " + (", ".join(f"{LABELS[m]} sha256 {h[:12]}" for m, h in hashes.items()) or "none"),
        "engine commit that fitted each row: " + ", ".join(
            f"{LABELS[m]} {commits(r for _, g in groups for r in g[m])}" for m in shown),
        f"GANFit++: {settings['ganfit++'].joint.steps} full-objective steps; GANFit: {settings['ganfit'].landmark.steps} landmark + "
        f"{settings['ganfit'].appearance.steps} lighting + {settings['ganfit'].joint.steps} full-objective steps",
    ]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    markdown = ["| photos | mode | n | landmark error, mean / median | dlib overlay, mean / median | "
                f"dlib turned {TURN_DEGREES:g}°, mean / median | s/photo (wall), mean / median | "
                "s/photo (CPU), mean / median |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
    for group, rows in groups:
        lines += ["", group, HEADER, "-" * len(HEADER)]
        summary[group] = {}
        for mode in shown:
            if not rows[mode]:
                continue
            s = summarise(rows[mode])
            summary[group][mode] = s
            lines.append(text_row(LABELS[mode], s))
            markdown.append(f"| {group} " + markdown_rows(LABELS[mode], s))
        if group == "sample photos":
            for mode in shown:
                for r in rows[mode]:
                    lines.append(f"  {LABELS[mode]:<12} {Path(r['photo']).stem:<13} lmk {r['landmark_error_iod']:6.2%}  "
                                 f"overlay {r['overlay']:.3f}  turned {r['turned']:.3f}  {r['seconds']:6.2f} s")
    if sample_skipped:
        lines += ["", "sample photos without a usable face: " + ", ".join(n for n, _ in sample_skipped)]
    if skipped:
        lines += ["", f"UTKFace photos skipped (no usable face): {len(skipped)}: " + ", ".join(f"{n} ({why.split(': ', 1)[-1][:40]})" for n, why in skipped)]
    # Photos where a regression mode is far from GANFit on the same photo.
    if "ganfit" in shown:
        for mode in [m for m in shown if m != "ganfit"]:
            far = [(a["photo"], a, b) for a, b in zip(utk["ganfit"], utk[mode])
                   if b["landmark_error_iod"] > max(2 * a["landmark_error_iod"], 0.05) or b["turned"] > a["turned"] + 0.1]
            lines.append(f"{LABELS[mode]} far from GANFit (landmark error > 2x and > 5%, or turned > GANFit's + 0.1): "
                         f"{len(far)} of {len(utk[mode])}" + "".join(
                             f"\n  {n}: lmk {b['landmark_error_iod']:.2%} vs {a['landmark_error_iod']:.2%}, turned "
                             f"{b['turned']:.3f} vs {a['turned']:.3f}" for n, a, b in far[:10]))
    lines.append(f"({runner.fresh} fits run now, the rest from the cache; {time.perf_counter() - started:.0f} s)")
    publish("table1", lines)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "threads": os.environ.get("GANFIT_THREADS"), "held_out_fraction": args.held_out,
        "weights_sha256": hashes, "fit_steps": {m: settings[m].joint.steps for m in MODES},
        "summary": summary, "skipped": skipped, "sample_skipped": sample_skipped,
        "photos": {group: {m: rows[m] for m in shown} for group, rows in groups},
    }, indent=1))
    if args.markdown:
        stamp = (f"Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; engine commit of each row: "
                 + ", ".join(f"{LABELS[m]} {commits(r for _, g in groups for r in g[m])}" for m in shown) + "; "
                 f"GANFIT_THREADS={os.environ.get('GANFIT_THREADS', 'unset')}; regressor weights "
                 + (", ".join(f"{LABELS[m]} sha256 `{h[:12]}`" for m, h in hashes.items()) or "none")
                 + f"; {len(skipped)} UTKFace photos skipped (no usable face).")
        replace_block(args.markdown, "table1", markdown + ["", stamp])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GanfitError as exc:  # e.g. the weights changed while it ran
        print(f"table1: {exc}", file=sys.stderr)
        sys.exit(1)
