"""Fast-GANFit's first stage on held-out photos (issue 19): how far the trained regressor's one
forward pass puts the 68 landmark vertices from the photo's landmarks, against the untrained
network (which is where the landmark stage starts: ``initial_pose`` of the mean face) and
against GANFit's landmark stage (300 Adam steps) on the same photos.

    python benchmarks/regressor_landmarks.py --run RUN [--photos 100]

RUN is a ``ganfit train-regressor --out`` folder. The photos are UTKFace photos held out by the
run's own rule (never trained on), the first N in a fixed hash order. The error is the mean
landmark distance over the outer-eye-corner distance (what ``ganfit reconstruct`` prints).
Prints a table and writes benchmarks/results/regressor_landmarks.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from report import publish

from ganfit.fit.landmark_stage import fit_landmarks
from ganfit.fit.settings import LandmarkStageSettings
from ganfit.models.shape_model import load_default_shape_model
from ganfit.regress.encoder import EncoderConfig, RegressionEncoder
from ganfit.texture.dataset import processing_order
from ganfit.train.regressor import (RegressorTrainConfig, _checkpoints, build_cache, is_held_out, landmark_error,
                                    list_photos, load_cache, load_checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a train-regressor run folder")
    parser.add_argument("--photos", type=int, default=100, help="held-out photos to score (default 100)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = RegressorTrainConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    found = _checkpoints(args.run)
    if not found:
        print(f"{args.run}: no checkpoint; train first (ganfit train-regressor --out {args.run})", file=sys.stderr)
        return 2
    state = load_checkpoint(found[-1])
    data = Path(config.data)
    if not data.is_absolute() and not data.is_dir():  # relative to where the run was started: the repo
        data = Path(__file__).resolve().parents[1] / data
    held = [p for p in list_photos(data) if is_held_out(p.name, config.held_out)]
    held = sorted(held, key=lambda p: processing_order(p.name))[: args.photos * 2]  # some have no face
    cache = Path(config.cache) if config.cache else args.run / "cache"
    build_cache(held, cache)
    photos = load_cache(held, cache)
    rows = list(range(min(args.photos, len(photos))))
    inputs = photos.inputs(rows, torch.device("cpu"))

    model = load_default_shape_model()
    trained = RegressionEncoder(model, EncoderConfig.from_dict(state["encoder_config"]))
    trained.load_state_dict(state["encoder"])
    untrained = RegressionEncoder(model, EncoderConfig.from_dict(state["encoder_config"]))
    errors: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with torch.no_grad():
        for name, net in (("untrained (initial pose, mean face)", untrained), ("Fast-GANFit stage 1", trained)):
            net.eval()
            started = time.perf_counter()
            params = net(inputs).params
            seconds[name] = (time.perf_counter() - started) / len(rows)
            errors[name] = landmark_error(params, inputs, model).tolist()
    fitted: list[float] = []
    started = time.perf_counter()
    for row in rows:  # GANFit's landmark stage from the same landmarks and focal length
        fit = fit_landmarks(model, inputs.landmarks[row:row + 1], inputs.image_size[row:row + 1],
                            inputs.focal[row:row + 1], LandmarkStageSettings())
        fitted.append(float(fit.error_iod[0]))
    seconds["GANFit landmark stage (300 steps)"] = (time.perf_counter() - started) / len(rows)
    errors["GANFit landmark stage (300 steps)"] = fitted

    lines = [f"Landmark error on {len(rows)} held-out UTKFace photos (never trained on), run {args.run.name}, "
             f"checkpoint step {int(state['step'])}; mean distance / outer-eye-corner distance, one CPU thread",
             f"{'':38s} {'mean':>7s} {'median':>7s} {'90th pct':>8s} {'ms/photo':>9s}"]
    for name, values in errors.items():
        ordered = sorted(values)
        lines.append(f"{name:38s} {statistics.mean(values):7.2%} {statistics.median(values):7.2%} "
                     f"{ordered[int(0.9 * (len(ordered) - 1))]:8.2%} {1000 * seconds[name]:9.2f}")
    publish("regressor_landmarks", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
