"""Table II of the paper for this project's texture models: how close are their samples to real
held-out UV maps? (issue 5)

Distance: KID (unbiased squared MMD, cubic polynomial kernel, averaged over random subsets; see
``ganfit.texture.metrics``), x 10^3, lower is better. Features: dlib's face-recognition ResNet
(the project's own offline network) on UV maps resized to 150x150, its 256-d pooled activations.
This is NOT Inception: the figures rank models measured the same way and cannot be compared
with the paper's FID values.

Rows:
- ``train maps`` (reference): real training maps against the held-out ones, the floor a perfect
  model would reach with this many samples;
- ``GAN``: samples of each exported generator (``--gan``, repeatable), truncation 1;
- ``PCA``: samples of each PCA model (``--pca``, repeatable, or one fitted here on the train
  split, ``-k``);
- ``mean + noise``: the mean training map plus independent Gaussian noise per texel with the
  training maps' per-texel standard deviation (a trivial baseline).
Each row also gives the mean sharpness (``ganfit.texture.metrics.sharpness``; inside ``--mask``
when given) next to that of the held-out maps. A GAN with a detail stage (``train-texture-detail``)
gets a second row without it. Below the table, the first GAN against each PCA model: the KID
difference with a 95% interval from a paired bootstrap (``metrics.kid_difference``), which is
what "the GAN beats PCA" has to rest on -- the +- of a row is the spread over subsets, not the
doubt about the mean.

``--test-data DIR`` takes the held-out maps from another UV folder (all of its maps): a set
that no model or checkpoint was chosen on.

    python benchmarks/texture_prior_table.py --data UV_DIR [--test-data UV_DIR2] [--gan texture_gan.npz]
        [--pca pca.npz] [--samples 1000] [--device cuda] [--update-provenance]

Prints the table and writes benchmarks/results/texture-prior.txt; ``--update-provenance`` also
writes the figures into the GAN's provenance JSON (``<weights>.json``, "quality").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from report import publish

from ganfit.texture.gan import GanTextureModel
from ganfit.texture.metrics import FEATURE_NOTE, DlibFeatureExtractor, KidResult, kid, kid_difference, sharpness
from ganfit.texture.model import TextureModel, UvTextureSet, load_texture_model
from ganfit.texture.pca import PcaFitSettings, fit_pca

log = logging.getLogger("texture_prior_table")

BATCH = 32


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255.0


def _batches(images: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], BATCH):
        yield images[start:start + BATCH]


def _model_batches(model: TextureModel, count: int, seed: int, size: int,
                   truncation: float = 1.0) -> Iterator[torch.Tensor]:
    """``count`` samples of ``model`` in batches, resized to ``size`` if the model's differs;
    ``truncation`` < 1 pulls a GAN's w towards its mean (StyleGAN's truncation trick)."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, BATCH):
        with torch.no_grad():
            latent = model.sample_latent(min(BATCH, count - start), generator)
            if truncation != 1.0:
                latent = model.initial_latent(latent.shape[0]).lerp(latent, truncation)
            batch = model.decode(latent).float()
        if batch.shape[-1] != size:
            batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False)
        yield batch.cpu()


def _noise_batches(mean: torch.Tensor, std: torch.Tensor, count: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        yield (mean + std * torch.randn(n, *mean.shape, generator=generator)).clamp(0, 1)


def _mask(spec: str, size: int) -> tuple[torch.Tensor | None, str]:
    """The sharpness region and how to name it."""
    if spec == "none":
        return None, "whole map"
    if spec == "face":
        try:
            from ganfit.texture.uv_layout import face_region_mask

            return face_region_mask(size), "face region of the default head's UV layout"
        except Exception as exc:  # noqa: BLE001 - a missing layout only widens the region
            log.warning("no face-region mask (%s): sharpness over the whole map", exc)
            return None, "whole map (no face mask available)"
    with Image.open(spec) as image:
        mask = torch.from_numpy(np.asarray(image.convert("L").resize((size, size)))).float() / 255.0
    return mask, f"inside {spec}"


class _Measure:
    """Features and sharpness of a stream of texture batches."""

    def __init__(self, extractor: DlibFeatureExtractor, mask: torch.Tensor | None) -> None:
        self.extractor = extractor
        self.mask = mask

    def __call__(self, batches: Iterator[torch.Tensor]) -> tuple[np.ndarray, float]:
        features, sharp = [], []
        for batch in batches:
            features.append(self.extractor(batch))
            sharp.append(sharpness(batch, self.mask))
        return np.concatenate(features), float(torch.cat(sharp).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="UV texture folder with a train/test split")
    parser.add_argument("--test-data", type=Path, default=None,
                        help="take the held-out maps from this UV folder instead (all of its maps)")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws of the GAN-vs-PCA difference")
    parser.add_argument("--gan", type=Path, action="append", default=[],
                        help="exported GAN weights (.npz); repeat to compare several (the first gets --update-provenance)")
    parser.add_argument("--truncation", type=float, action="append", default=None, metavar="PSI",
                        help="also measure GAN samples with w pulled towards its mean, w_mean + PSI (w - w_mean) "
                             "(repeat for several; the first GAN row is always PSI 1)")
    parser.add_argument("--pca", type=Path, action="append", default=[],
                        help="PCA model (.npz), repeatable; default: fit one on the train split")
    parser.add_argument("-k", "--components", type=int, default=100, help="PCA components when fitting (default 100)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="texture size compared (default: the GAN's, else 256)")
    parser.add_argument("--samples", type=int, default=1000, help="samples per model (default 1000)")
    parser.add_argument("--subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    parser.add_argument("--mask", default="face",
                        help="region for sharpness: 'face' (the head's face chart, ganfit.texture.uv_layout; "
                             "default), 'none' (whole map) or a mask PNG (white = face)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-provenance", action="store_true",
                        help="write the figures into the GAN's provenance JSON")
    parser.add_argument("--name", default="texture-prior", help="results file name (default texture-prior)")
    args = parser.parse_args(argv)
    if args.draws < 1 or args.samples < 5:
        parser.error("--draws must be >= 1 and --samples >= 5")
    if args.test_data and args.test_data.resolve() == args.data.resolve():
        parser.error("--test-data is --data: give another folder, or leave it out to use the test split")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    started = time.perf_counter()

    def name(path: Path, paths: list[Path]) -> str:  # the file name, or the whole path when names repeat
        return path.name if [p.name for p in paths].count(path.name) == 1 else str(path)

    gans = [(path, load_texture_model(path, device=device)) for path in args.gan]
    size = args.resolution or (gans[0][1].resolution if gans else 256)
    held_out_set = UvTextureSet.open(args.test_data, "all") if args.test_data else UvTextureSet.open(args.data, "test")
    held_out = _to_tensor(held_out_set.load(size))
    train_set = UvTextureSet.open(args.data, "train")
    train = _to_tensor(train_set.load(size, limit=args.samples))
    pcas: list[tuple[str, TextureModel]] = []
    for path in args.pca:
        pca = load_texture_model(path, device=device)
        pcas.append((f"PCA ({pca.latent_dim} components, {name(path, args.pca)})", pca))
    if not pcas:
        pca = fit_pca(args.data, PcaFitSettings(components=args.components), resolution=size, device=device)
        pcas.append((f"PCA ({pca.latent_dim} components, fitted on {len(train_set)} train maps)", pca))
    mask, mask_label = _mask(args.mask, size)

    measure = _Measure(DlibFeatureExtractor(device, batch_size=BATCH), mask)
    real_features, real_sharp = measure(_batches(held_out))
    rows: list[tuple[str, int, KidResult, float]] = []
    features_of: dict[str, np.ndarray] = {}

    def add(label: str, count: int, batches: Iterator[torch.Tensor]) -> None:
        features, sharp = measure(batches)
        result = kid(real_features, features, args.subsets, args.subset_size, seed=args.seed)
        rows.append((label, count, result, sharp))
        features_of[label] = features
        log.info("%s: KID %s", label, result)

    add("train maps (reference)", train.shape[0], _batches(train))
    for path, gan in gans:
        add(f"GAN ({name(path, args.gan)})", args.samples, _model_batches(gan, args.samples, args.seed + 1, size))
        if getattr(gan, "detail", None) is not None:
            plain = GanTextureModel.load(path, device=device, detail=False)
            add(f"GAN ({name(path, args.gan)}) without its detail stage", args.samples,
                _model_batches(plain, args.samples, args.seed + 1, size))
        for psi in args.truncation or []:
            if getattr(gan, "latent_space", None) != "w":
                break
            add(f"GAN ({name(path, args.gan)}), truncation {psi:g}", args.samples,
                _model_batches(gan, args.samples, args.seed + 1, size, psi))
    for pca_label, pca in pcas:
        add(pca_label, args.samples, _model_batches(pca, args.samples, args.seed + 2, size))
    std = train.std(dim=0)
    add("mean + per-texel Gaussian noise", args.samples, _noise_batches(train.mean(dim=0), std, args.samples,
                                                                         args.seed + 3))

    lines = [
        "Texture prior quality (paper Table II analogue): KID x 10^3 against held-out UV maps, lower is better",
        f"  {FEATURE_NOTE}",
        f"  data: {args.data} -- {held_out.shape[0]} held-out maps "
        f"({'all of ' + str(args.test_data) if args.test_data else 'test split'}) at {size} px; "
        f"{args.subsets} subsets of up to {args.subset_size}",
        f"  sharpness: mean squared Laplacian of luminance x 10^3 ({mask_label}); "
        f"held-out maps: {real_sharp * 1e3:.3f}",
        "",
        f"{'model':58s} {'samples':>7s} {'KID x 1e3':>17s} {'sharpness':>9s}",
    ]
    for label, count, result, sharp in rows:
        lines.append(f"{label:58s} {count:7d} {result.mean * 1e3:8.2f} +- {result.std * 1e3:5.2f} {sharp * 1e3:9.3f}")
    if not gans:
        lines.append("GAN: no --gan weights given (train and export one: docs/texture-model.md)")
    differences = {}
    if gans:
        gan_label = f"GAN ({name(gans[0][0], args.gan)})"
        lines += ["", f"{gan_label} minus each PCA, KID x 1e3, paired bootstrap over held-out maps and samples:"]
        for pca_label, _ in pcas:
            difference = kid_difference(real_features, features_of[gan_label], features_of[pca_label],
                                        draws=args.draws, seed=args.seed)
            differences[pca_label] = difference
            lines.append(f"  vs {pca_label}: {difference.mean * 1e3:+.2f} (95% interval {difference.low * 1e3:+.2f} "
                         f".. {difference.high * 1e3:+.2f}); the GAN is closer in {100 * difference.a_better:.1f}% "
                         f"of {difference.draws} draws")
    lines.append(f"({time.perf_counter() - started:.0f} s, device {device})")
    publish(args.name, lines)

    if args.update_provenance and gans:
        provenance_path = gans[0][0].with_suffix(".json")
        provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
        by_label = {label: (result, sharp) for label, _, result, sharp in rows}
        quality = {
            "metric": "KID x 1e3 vs held-out UV maps (lower is better)",
            "features": FEATURE_NOTE,
            "held_out_maps": int(held_out.shape[0]),
            "samples": args.samples,
            "resolution": size,
            "kid_x1e3": {label: round(result.mean * 1e3, 3) for label, (result, _) in by_label.items()},
            "kid_std_x1e3": {label: round(result.std * 1e3, 3) for label, (result, _) in by_label.items()},
            "sharpness_x1e3": {label: round(sharp * 1e3, 4) for label, (_, sharp) in by_label.items()}
            | {"held-out maps": round(real_sharp * 1e3, 4)},
            "measured_by": "benchmarks/texture_prior_table.py",
        }
        gan_label = f"GAN ({name(gans[0][0], args.gan)})"  # truncation 1: the model as it samples
        quality["kid_heldout"] = quality["kid_x1e3"][gan_label]  # what `ganfit info` shows
        best_pca = min((label for label, _ in pcas), key=lambda label: quality["kid_x1e3"][label])
        quality["kid_heldout_pca"] = quality["kid_x1e3"][best_pca]  # the best PCA given, and which
        quality["kid_heldout_pca_model"] = best_pca
        quality["held_out_data"] = str(args.test_data or args.data)
        quality["kid_difference_vs_pca_x1e3"] = {
            label: {"mean": round(d.mean * 1e3, 3), "low95": round(d.low * 1e3, 3), "high95": round(d.high * 1e3, 3),
                    "gan_closer_share": round(d.a_better, 4), "draws": d.draws} for label, d in differences.items()}
        provenance["quality"] = quality
        partial = provenance_path.with_name(provenance_path.name + ".partial")
        partial.write_text(json.dumps(provenance, indent=2) + "\n")
        partial.replace(provenance_path)  # never a half-written provenance file
        log.info("quality figures written to %s", provenance_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
