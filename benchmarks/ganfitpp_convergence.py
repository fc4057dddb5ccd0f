"""GANFit++ convergence (paper Fig. 7, section 5.2.4; issue 19): the full objective per step for
GANFit and for GANFit++ started from the regression network, and GANFit++'s identity figures at
several step counts, to choose its default.

On the 20 ``OBJECTIVE_TEST_PHOTOS`` (the tuning set) each photo is reconstructed

- by GANFit with its defaults: 300 landmark and 80 lighting steps, then 60 steps of the full
  objective (eq. 13);
- by GANFit++ with ``fit_steps`` 60 (the curve) and each of ``--steps`` (default 10, 20, 30, 60):
  the regression network's output moved to the nearest minimum of the objective's landmark and
  prior terms (three Gauss-Newton steps, ``fit.landmark_stage.solve_landmarks``: no rendering,
  about 20 ms), then that many steps of the same objective.

The curve is ``result.losses["joint_total"]``: the objective's total at each full-objective
step (evaluated before that step's update, so step 1 is the starting point). Each step draws a new
random pose (eq. 8), so one photo's total is noisy from step to step (the random-pose term alone
moves by 0.01-0.02). Photo i is fitted with seed i in both modes: GANFit and GANFit++ draw the
same random views step by step on one photo (the curves compare step for step), and the mean
curve averages over 20 independent draws per step instead of repeating one draw's spikes (with
one seed for all photos, step 20 was a hard view for every photo: both means jumped by 0.02).

Reports, per photo and on average, the first step at which GANFit++'s objective reaches GANFit's
final value (its value at its 60th step; also with both smoothed over 5 steps), which curve is
lower at GANFit++'s default step count, and dlib's overlay and turned-25-degree distances
(``identity_distance.fit_and_judge``) of GANFit++ at each step count against GANFit's. Plots the
mean curves with their interquartile band to docs/images/ganfitpp_convergence.png.

    GANFIT_THREADS=1 python benchmarks/ganfitpp_convergence.py [--steps 10,20,30,60]
        [--markdown docs/fast-ganfit-results.md] [--regressor WEIGHTS.npz] [--photos-limit N]

Fits are cached like ``table1.py``'s (keyed by the photo, the settings and the regressor
weights' SHA-256): after new weights only GANFit++ runs again. Writes
benchmarks/results/ganfitpp_convergence.txt and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from identity_distance import TURN_DEGREES, UTKFACE, utkface_test_photos
from report import RESULTS, publish, replace_block
from table1 import Runner, commits, git_commit, held_out_photos, mode_settings, weights_hash

from ganfit.errors import GanfitError
from ganfit.train.regressor import RegressorTrainConfig

ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "docs" / "images" / "ganfitpp_convergence.png"
SMOOTH = 5  # steps: the trailing window of the smoothed comparison


def first_reaching(curve: list[float], target: float) -> int | None:
    """The first (1-based) step whose objective is at or below ``target``; None if none is."""
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def smoothed(curve: list[float], window: int = SMOOTH) -> list[float]:
    """Trailing mean over ``window`` steps (fewer at the start)."""
    values = np.asarray(curve, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    return [float((sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1)) for i in range(len(values))]


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        steps = []
    if not steps or steps[0] < 1:
        raise GanfitError(f"--steps {text}: expected comma-separated whole numbers of at least 1, such as 10,20,30,60")
    return steps


def plot(path: Path, ganfit: np.ndarray, plus: np.ndarray, default_steps: int, photos: int, hashed: str,
         kind: str = "tuning") -> None:
    """Mean curves with their interquartile band; GANFit's mean final value and GANFit++'s
    default step count marked; a log scale when the curves span more than a factor 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.9), dpi=100)
    for curves, label, colour in ((ganfit, "GANFit (after 300 landmark + 80 lighting steps)", "tab:blue"),
                                  (plus, "GANFit++ (from the regression network + landmark solve)", "tab:red")):
        x = np.arange(1, curves.shape[1] + 1)
        ax.fill_between(x, np.percentile(curves, 25, axis=0), np.percentile(curves, 75, axis=0), color=colour, alpha=0.15,
                        linewidth=0)
        ax.plot(x, curves.mean(0), color=colour, label=label + ", mean", linewidth=1.8)
    final = float(ganfit[:, -1].mean())
    ax.axhline(final, color="tab:blue", linestyle="--", linewidth=1, label=f"GANFit's final value, mean ({final:.3f})")
    ax.axvline(default_steps, color="grey", linestyle=":", linewidth=1, label=f"GANFit++ default ({default_steps} steps)")
    ax.set_xlabel("optimisation steps of the full objective (eq. 13)")
    ax.set_ylabel("full objective (total)")
    ax.set_title(f"GANFit++ convergence, {photos} {kind} UTKFace photos (band: 25-75th percentile)", fontsize=10)
    ax.set_xlim(1, max(ganfit.shape[1], plus.shape[1]))
    means = np.concatenate([ganfit.mean(0), plus.mean(0)])
    if means.max() > 4 * means.min() > 0:  # a far start would flatten the end, where the curves meet
        ax.set_yscale("log")
        ax.set_ylabel("full objective (total, log scale)")
    ax.legend(fontsize=7.5, loc="upper right")
    ax.text(0.01, 0.01, f"regressor sha256 {hashed[:12]}", transform=ax.transAxes, fontsize=6, color="grey")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="10,20,30,60",
                        help="GANFit++ full-objective step counts to judge (default 10,20,30,60; the largest gives the curve)")
    parser.add_argument("--photos-limit", type=int, default=None, help="only the first N of the 20 photos")
    parser.add_argument("--held-out", action="store_true",
                        help="the first 20 held-out photos (never trained or tuned on; table1.py's order) instead "
                             "of the 20 tuning photos; writes *_held_out outputs and the markdown block "
                             "convergence-held-out")
    parser.add_argument("--regressor", type=Path, default=None, help="regressor weights (default: the shipped ones)")
    parser.add_argument("--plot", type=Path, default=PLOT, help="the PNG (default docs/images/ganfitpp_convergence.png)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the tables here (between <!-- convergence --> markers if present, else appended)")
    parser.add_argument("--no-cache", action="store_true", help="fit everything again (and refresh the cache)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        steps = parse_steps(args.steps)
        if args.photos_limit is not None and args.photos_limit < 1:
            raise GanfitError(f"--photos-limit {args.photos_limit}: expected a whole number of at least 1")
        if args.regressor is not None and not args.regressor.is_file():
            raise GanfitError(f"--regressor {args.regressor}: file not found")
        if args.held_out:
            fraction = RegressorTrainConfig(out="").held_out
            photos = held_out_photos(UTKFACE, fraction)[:20][: args.photos_limit]
        else:
            photos = utkface_test_photos()[: args.photos_limit]  # photo i is fitted with seed i
        missing = [p for p in photos if not p.is_file()]
        if missing:
            raise GanfitError(f"{missing[0]}: not found (UTKFace lives in ../shared/data/utkface/crop_part1)")
        ganfit_settings = [mode_settings("ganfit", device=args.device, seed=i) for i in range(len(photos))]
        plus_settings = [{n: mode_settings("ganfit++", args.regressor, fit_steps=n, device=args.device, seed=i) for n in steps}
                         for i in range(len(photos))]
        hashed = weights_hash(plus_settings[0][steps[0]])
        assert hashed is not None
    except GanfitError as exc:
        print(f"ganfitpp_convergence: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("GANFIT_THREADS") != "1":
        print("ganfitpp_convergence: note: GANFIT_THREADS is not 1; the seconds are not the one-thread figures", file=sys.stderr)
    photo_set = ("held-out photos (never trained or tuned on)" if args.held_out
                 else "objective tuning photos (OBJECTIVE_TEST_PHOTOS)")
    suffix = "_held_out" if args.held_out else ""
    if args.held_out and args.plot == PLOT:
        args.plot = PLOT.with_name(f"ganfitpp_convergence{suffix}.png")
    curve_steps = steps[-1]
    default_steps = mode_settings("ganfit++").joint.steps  # GANFit++'s default step count
    runner = Runner(use_cache=not args.no_cache)
    started = time.perf_counter()
    ganfit: list[dict[str, Any]] = []
    plus: dict[int, list[dict[str, Any]]] = {n: [] for n in steps}
    used: list[str] = []
    for i, photo in enumerate(photos):
        g = runner.fit(ganfit_settings[i], photo, None)
        p = {n: runner.fit(plus_settings[i][n], photo, hashed) for n in steps}
        if "skipped" in g or any("skipped" in r for r in p.values()):
            print(f"  skip {photo.name}: {g.get('skipped') or next(r['skipped'] for r in p.values() if 'skipped' in r)}",
                  file=sys.stderr)
            continue
        used.append(photo.name)
        ganfit.append(g)
        for n in steps:
            plus[n].append(p[n])
        print(f"  {photo.name[:30]:30s} GANFit final {g['joint_total'][-1]:.4f} turned {g['turned']:.3f}; GANFit++ "
              f"first {p[curve_steps]['joint_total'][0]:.4f} final {p[curve_steps]['joint_total'][-1]:.4f} "
              + " ".join(f"{n}:{p[n]['turned']:.3f}" for n in steps), file=sys.stderr, flush=True)
    if not used:
        print("ganfitpp_convergence: no photo with a usable face", file=sys.stderr)
        return 1

    g_curves = np.array([r["joint_total"] for r in ganfit])
    p_curves = np.array([r["joint_total"] for r in plus[curve_steps]])
    g_steps = g_curves.shape[1]
    # The same seed draws the same random renders: a shorter GANFit++ run is the longer one's start.
    drift = max(float(np.abs(np.array(plus[n][i]["joint_total"]) - p_curves[i, :n]).max())
                for n in steps for i in range(len(used)))
    reach = [first_reaching(list(p), float(g[-1])) for g, p in zip(g_curves, p_curves)]
    reach_smooth = [first_reaching(smoothed(list(p)), smoothed(list(g))[-1]) for g, p in zip(g_curves, p_curves)]
    mean_reach = first_reaching(list(p_curves.mean(0)), float(g_curves[:, -1].mean()))

    def describe(values: list[int | None]) -> str:
        reached = [v for v in values if v is not None]
        text = f"reached by {len(reached)}/{len(values)} photos"
        if reached:
            text += (f"; over those, mean step {statistics.mean(reached):.1f}, median {statistics.median(reached):g}, "
                     f"max {max(reached)}")
        if len(reached) < len(values):
            counted = [v if v is not None else curve_steps + 1 for v in values]
            text += f"; counting never-reached as {curve_steps + 1}: mean {statistics.mean(counted):.1f}"
        return text

    d = min(default_steps, curve_steps, g_steps) - 1
    lower_at_default = int(np.sum(p_curves[:, d] < g_curves[:, d]))
    below_final_at_default = int(np.sum(p_curves[:, d] <= g_curves[:, -1]))
    lines = [
        f"GANFit++ convergence (paper Fig. 7) on the {len(used)} {photo_set}; "
        f"regressor sha256 {hashed[:12]}; {os.environ.get('GANFIT_THREADS', 'default')} thread(s)",
        f"objective: result.losses['joint_total'] per full-objective step; GANFit: {ganfit_settings[0].landmark.steps} landmark + "
        f"{ganfit_settings[0].appearance.steps} lighting steps (not on the curve), then {g_steps} steps; "
        f"GANFit++: {curve_steps} steps from the regression network and 3 Gauss-Newton steps on the landmark terms",
        f"(shorter GANFit++ runs match the {curve_steps}-step run's first steps to {drift:.1e})",
        "",
        f"mean objective at step 1 / 10 / 20 / 30 / {g_steps}:",
        "  GANFit    " + " / ".join(f"{g_curves[:, min(s, g_steps) - 1].mean():.4f}" for s in (1, 10, 20, 30, g_steps)),
        "  GANFit++  " + " / ".join(f"{p_curves[:, min(s, curve_steps) - 1].mean():.4f}" for s in (1, 10, 20, 30, curve_steps)),
        f"first step at which GANFit++ reaches GANFit's final value (its step {g_steps}): {describe(reach)}",
        f"  smoothed over {SMOOTH} steps (both curves): {describe(reach_smooth)}",
        f"  mean curve reaches the mean final value at step {mean_reach if mean_reach else f'> {curve_steps}'} "
        f"(a third of GANFit's {g_steps} steps is {g_steps // 3})",
        f"at GANFit++'s default {default_steps} steps: mean objective GANFit++ {p_curves[:, d].mean():.4f} vs GANFit "
        f"{g_curves[:, d].mean():.4f} at its step {d + 1} (GANFit++ lower on {lower_at_default}/{len(used)} photos) and "
        f"GANFit's final {g_curves[:, -1].mean():.4f} (GANFit++ at or below it on {below_final_at_default}/{len(used)})",
        "",
        f"per photo: GANFit final | GANFit++ step 1 | step {default_steps} | step {curve_steps} | first step reaching GANFit's final (raw, smoothed)",
    ]
    for name, g, p, r, rs in zip(used, g_curves, p_curves, reach, reach_smooth):
        lines.append(f"  {name.split('.')[0][:26]:<26} {g[-1]:8.4f} | {p[0]:8.4f} | {p[d]:8.4f} | {p[-1]:8.4f} | "
                     f"{r if r else '-':>3} {rs if rs else '-':>3}")

    def stats(records: list[dict[str, Any]]) -> dict[str, float]:
        return {k: statistics.mean(r[k] for r in records) for k in ("overlay", "turned", "landmark_error_iod", "seconds", "cpu_seconds")}

    rows = [("GANFit", f"{ganfit_settings[0].landmark.steps}+{ganfit_settings[0].appearance.steps}+{g_steps}", stats(ganfit), ganfit)]
    rows += [("GANFit++", str(n), stats(plus[n]), plus[n]) for n in steps]
    header = f"{'mode':<9} | {'steps':>10} | {'overlay':>7} | {'turned 25°':>10} | {'turned ≤ GANFit':>15} | {'lmk err':>7} | {'s/photo':>7} | {'CPU s':>6}"
    lines += ["", f"identity (dlib descriptor distance to the photo, mean of {len(used)}):", header, "-" * len(header)]
    markdown = ["| mode | steps (landmark + lighting + full objective) | dlib overlay | dlib turned 25° | "
                "photos with turned ≤ GANFit's | landmark error | s/photo (wall) | s/photo (CPU) |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mode, label, s, records in rows:
        better = sum(r["turned"] <= g["turned"] for r, g in zip(records, ganfit))
        versus = "-" if records is ganfit else f"{better}/{len(used)}"
        lines.append(f"{mode:<9} | {label:>10} | {s['overlay']:7.3f} | {s['turned']:10.3f} | {versus:>15} | "
                     f"{s['landmark_error_iod']:7.2%} | {s['seconds']:7.2f} | {s['cpu_seconds']:6.2f}")
        markdown.append(f"| {mode} | {label if mode == 'GANFit' else 'landmark solve + 0 + ' + label} | {s['overlay']:.3f} | {s['turned']:.3f} | "
                        f"{versus} | {s['landmark_error_iod']:.2%} | {s['seconds']:.2f} | {s['cpu_seconds']:.2f} |")
    lines.append(f"({runner.fresh} fits run now, the rest from the cache; {time.perf_counter() - started:.0f} s)")
    publish(f"ganfitpp_convergence{suffix}", lines)

    plot(args.plot, g_curves, p_curves, default_steps, len(used), hashed, "held-out" if args.held_out else "tuning")
    print(f"wrote {args.plot} ({args.plot.stat().st_size // 1024} KB)", file=sys.stderr)
    (RESULTS / f"ganfitpp_convergence{suffix}.json").write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "weights_sha256": hashed, "photos": used, "ganfit_curves": g_curves.tolist(), "ganfitpp_curves": p_curves.tolist(),
        "first_step_reaching": reach, "first_step_reaching_smoothed": reach_smooth, "mean_curve_reaching": mean_reach,
        "identity": {f"{mode} {label}": s for mode, label, s, _ in rows},
    }, indent=1))
    if args.markdown:
        summary = [
            f"- First step at which GANFit++ reaches GANFit's final objective value: {describe(reach)}.",
            f"- Smoothed over {SMOOTH} steps: {describe(reach_smooth)}.",
            f"- The mean GANFit++ curve reaches GANFit's mean final value "
            f"({g_curves[:, -1].mean():.4f}) at step {mean_reach if mean_reach else f'> {curve_steps}'}.",
            f"- At GANFit++'s default {default_steps} steps its mean objective is {p_curves[:, d].mean():.4f}, against "
            f"GANFit's {g_curves[:, d].mean():.4f} at the same step ({'GANFit++' if p_curves[:, d].mean() < g_curves[:, d].mean() else 'GANFit'} "
            f"lower; GANFit++ lower on {lower_at_default}/{len(used)} photos) and GANFit's final "
            f"{g_curves[:, -1].mean():.4f}.",
        ]
        stamp = (f"Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; engine commit of GANFit's fits "
                 f"{commits(ganfit)}, of GANFit++'s {commits(r for n in steps for r in plus[n])}; "
                 f"GANFIT_THREADS={os.environ.get('GANFIT_THREADS', 'unset')}, regressor weights sha256 `{hashed[:12]}`.")
        replace_block(args.markdown, "convergence" + ("-held-out" if args.held_out else ""), summary + ["", f"Identity on the same {len(used)} photos, "
                      f"dlib descriptor distance to the photo (turned: the head turned {TURN_DEGREES:g}°), means:", ""]
                      + markdown + ["", stamp])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GanfitError as exc:  # e.g. the weights changed while it ran
        print(f"ganfitpp_convergence: {exc}", file=sys.stderr)
        sys.exit(1)
