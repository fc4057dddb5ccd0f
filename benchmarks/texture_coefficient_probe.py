"""What a PCA-latent texture GAN's samples lack: KID of coefficient sets decoded through the GAN's
own components, from the training maps' true coefficients down to Gaussians, plus the moments
a GAN can learn (norm, tails, coupling of components' energies).

A diagnostic for docs/texture-model.md ("Status on real data"), not a quality target: it says
whether the gap to the held-out maps lives in the first two moments (then PCA's Gaussian is
enough), in the coarse components or in the fine ones. Same features and KID as
benchmarks/texture_prior_table.py (dlib ResNet on 150 px UV maps, subsets of the 69 held-out).

    python benchmarks/texture_coefficient_probe.py --data UV_DIR --gan PCA_LATENT_GAN.npz \\
        [--samples 1000] [--coarse 30] [--scale 1.15]

``--scale S`` (repeatable) adds the GAN's coefficients multiplied by S: a probe of how far
the samples' spread is off, not a way to improve a model (a factor tuned on held-out maps
would be fitted to the test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import ganfit  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import publish  # noqa: E402
from texture_prior_table import _batches, _mask, _Measure, _to_tensor  # noqa: E402

from ganfit.errors import GanfitError  # noqa: E402
from ganfit.texture.gan import CoefficientDiscriminator, GanTextureModel  # noqa: E402
from ganfit.texture.metrics import DlibFeatureExtractor, kid  # noqa: E402
from ganfit.texture.model import UvTextureSet, load_texture_model  # noqa: E402

CHUNK = 64


def _moments(c: torch.Tensor) -> str:
    """Norm (mean, sd), median kurtosis of the components, mean |correlation| of their energies."""
    c = c[:, c.std(0) > 1e-8]  # components left empty (fewer maps than components)
    z = (c - c.mean(0)) / c.std(0)
    energy = c.square()
    energy = (energy - energy.mean(0)) / energy.std(0)
    coupling = (energy.T @ energy) / len(c)
    coupling.fill_diagonal_(0)
    norms = c.norm(dim=1)
    return (f"norm {norms.mean():5.1f} +- {norms.std():4.1f}   kurtosis {z.pow(4).mean(0).median():4.2f}   "
            f"energy coupling {coupling.abs().mean():.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="UV texture folder with a train/test split")
    parser.add_argument("--gan", type=Path, required=True, help="a PCA-latent GAN export (train-texture --preset pca-latent)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--coarse", type=int, default=30, help="how many leading components count as coarse")
    parser.add_argument("--scale", type=float, action="append", default=[], help="also the GAN's coefficients x S")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        model = load_texture_model(str(args.gan))
        if not isinstance(model, GanTextureModel) or model.config.detail or not model.config.pca_base:
            raise GanfitError(f"{args.gan} is not a PCA-latent GAN (train-texture --preset pca-latent)")
        train = UvTextureSet.open(args.data, "train").load(model.config.resolution)
        held_out = UvTextureSet.open(args.data, "test").load(model.config.resolution)
    except GanfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.time()
    torch.manual_seed(args.seed)
    generator = model.generator
    synthesis = generator.synthesis
    projector = CoefficientDiscriminator(model.config)  # only its projection on the components
    projector.mean_image.copy_(synthesis.mean_image)
    projector.pca_basis.copy_(synthesis.pca_basis)
    measure = _Measure(DlibFeatureExtractor(torch.device("cpu"), batch_size=32), _mask("face", model.config.resolution)[0])
    real_features, _ = measure(_batches(_to_tensor(held_out)))
    n = args.samples

    with torch.no_grad():
        maps = _to_tensor(train) * 2 - 1  # the generator's [-1, 1]
        data = torch.cat([projector.coefficients(part) for batch in maps.split(CHUNK)
                          for part in (batch, batch.flip(-1))])  # with mirror images, as in training
        mean, covariance = data.mean(0), torch.cov(data.T)
        jitter = 1e-6 * torch.eye(len(mean))
        gaussian = torch.distributions.MultivariateNormal(mean, covariance + jitter).sample((n,))
        pick = torch.randint(0, len(data), (n,))
        gan = synthesis.pca_coefficients(generator.mapping(torch.randn(n, model.config.z_dim)))
        # What the projection finds in the GAN's images (components stored below the output size
        # are blurred by the resize): the space the data's coefficients live in, for the moments.
        gan_seen = gan @ projector.generator_projection(synthesis)
        k = args.coarse
        sets: dict[str, torch.Tensor] = {
            "training maps' own coefficients (floor)": data[pick],
            "Gaussian, the data's mean and covariance": gaussian,
            "each coefficient from its own marginal": torch.stack(
                [data[torch.randint(0, len(data), (n,)), j] for j in range(len(mean))], 1),
            f"data, first {k} coefficients Gaussian": torch.cat([gaussian[:, :k], data[pick, k:]], 1),
            f"data, all but the first {k} Gaussian": torch.cat([data[pick, :k], gaussian[:, k:]], 1),
            "GAN samples": gan,
        }
        for factor in args.scale:
            sets[f"GAN samples x {factor:g}"] = gan * factor

        def images(c: torch.Tensor):
            for part in c.split(CHUNK):
                yield ((synthesis.mean_image + synthesis.coefficient_image(part)).clamp(-1, 1) + 1) / 2

        lines = ["Texture GAN coefficient probe: KID x 10^3 vs held-out maps of coefficient sets decoded "
                 "through the GAN's components",
                 f"  GAN: {args.gan} ({model.config.pca_base} components at {model.config.pca_size} px); "
                 f"data: {args.data} ({len(train)} train maps + mirror images, {len(held_out)} held out); "
                 f"{n} samples per set, 100 subsets of {len(held_out)}",
                 "", f"{'coefficients':48s} {'KID x 1e3':>16s}"]
        for label, c in sets.items():
            features, _ = measure(images(c))
            result = kid(real_features, features, 100, len(held_out), seed=args.seed)
            lines.append(f"{label:48s} {result.mean * 1e3:8.1f} +- {result.std * 1e3:4.1f}")
        lines += ["", "moments (whitened units):",
                  f"  data     {_moments(data)}", f"  GAN      {_moments(gan_seen)}  (projected from its images)",
                  f"  Gaussian {_moments(gaussian)}",
                  f"({time.time() - start:.0f} s)"]
    publish("texture-coefficient-probe", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
