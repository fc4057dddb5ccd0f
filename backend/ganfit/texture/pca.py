"""PCA texture model (paper eq. 1): the linear baseline the GAN prior is measured against.

``T(p) = mean + U diag(std) p`` with ``p ~ N(0, I)``: ``U`` holds the ``k`` leading principal
directions of the training UV maps (rows, orthonormal), ``std`` the standard deviation of the data
along each. The latent is whitened so ``prior(p) = ||p||^2`` like the GAN's ``||z||^2``.

Fitting: a folder of ~10k 256x256 maps is a 10k x 196,608 matrix (1.9 GB as uint8, the form it is
kept in here). An exact Gram-matrix PCA would cost N^2 D (~10^13 flops); a randomised SVD
(Halko, Martinsson and Tropp 2011: range finder with ``oversample`` extra columns and
``power_iterations`` passes, then an exact SVD of the small projected matrix) needs a few passes
of N D (k + p) and is exact whenever ``k + p >= N``. Rows are centred chunk by chunk, never all at
once in float.

File: ``.npz`` (no pickle) with ``kind="pca"``, ``mean`` (3, S, S) float32, ``basis`` (k, 3*S*S)
float16 (half the size; decoding error < 1e-3 of a pixel value), ``std`` (k,) float32,
``explained_variance_ratio`` and a JSON ``info`` string (training set, count, options).
"""

from __future__ import annotations

import argparse
import json
import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ganfit.errors import ModelDataError
from ganfit.io.atomic import atomic_savez
from ganfit.models.limits import check_npz
from ganfit.texture.model import Split, UvTextureSet

__all__ = ["PcaFitSettings", "PcaTextureModel", "fit_pca", "fit_pca_arrays", "main", "register", "run"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PcaFitSettings:
    """How a PCA texture model is fitted."""

    components: int = 100
    #: Weight each map's texels by its confidence map when averaging (texels filled from the
    #: mirror side or unseen count less); the principal directions are unweighted.
    confidence_weighted_mean: bool = False
    oversample: int = 10
    power_iterations: int = 2
    #: Rows per chunk when centring (memory: chunk * 3 * S * S * 4 bytes).
    chunk: int = 128
    seed: int = 0


class PcaTextureModel(nn.Module):
    """``decode(p) = clamp(mean + (p * std) @ basis, 0, 1)`` as ``(B, 3, S, S)``; implements
    ``TextureModel``. Buffers move with ``.to(device)``; the basis is float32 in memory."""

    mean: torch.Tensor
    basis: torch.Tensor
    std: torch.Tensor
    explained_variance_ratio: torch.Tensor

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor,
                 explained_variance_ratio: torch.Tensor | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        if mean.ndim != 3 or mean.shape[0] != 3 or mean.shape[1] != mean.shape[2]:
            raise ValueError(f"mean must be (3, S, S), got {tuple(mean.shape)}")
        if basis.ndim != 2 or basis.shape[1] != mean.numel() or std.shape != (basis.shape[0],):
            raise ValueError(f"basis {tuple(basis.shape)} / std {tuple(std.shape)} do not match mean {tuple(mean.shape)}")
        self.register_buffer("mean", mean.float())
        self.register_buffer("basis", basis.float())
        self.register_buffer("std", std.float())
        ratio = explained_variance_ratio if explained_variance_ratio is not None else torch.zeros_like(std)
        self.register_buffer("explained_variance_ratio", ratio.float())
        self.info: dict[str, Any] = dict(info or {})

    @property
    def latent_dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.mean.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``(B, k)`` whitened coefficients -> ``(B, 3, S, S)`` in [0, 1] (differentiable; the
        clamp passes no gradient to texels outside [0, 1])."""
        flat = self.mean.flatten() + (latent.to(self.basis.dtype) * self.std) @ self.basis
        return flat.view(-1, *self.mean.shape).clamp(0.0, 1.0)

    forward = decode

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(n, self.latent_dim, generator=generator, device=device).to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random textures ``(n, 3, S, S)``."""
        return self.decode(self.sample_latent(n, generator))

    def prior(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.square().sum(dim=-1)

    def initial_latent(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, self.latent_dim, device=self.device)

    def project(self, textures: torch.Tensor) -> torch.Tensor:
        """Least-squares coefficients ``(B, k)`` of textures ``(B, 3, S, S)`` (the float16-stored
        basis is only nearly orthonormal, so this solves the normal equations)."""
        centred = textures.to(self.basis.dtype).flatten(1) - self.mean.flatten()
        gram = self.basis @ self.basis.T
        coeffs = torch.linalg.solve(gram, self.basis @ centred.T).T
        return coeffs / self.std

    # ---------------------------------------------------------------------------------------
    # Files

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` atomically (a crash never leaves a half-written model)."""
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "kind": np.array("pca"),
            "version": np.array(FORMAT_VERSION),
            "mean": self.mean.detach().cpu().numpy().astype(np.float32),
            "basis": self.basis.detach().cpu().numpy().astype(np.float16),
            "std": self.std.detach().cpu().numpy().astype(np.float32),
            "explained_variance_ratio": self.explained_variance_ratio.detach().cpu().numpy().astype(np.float32),
            "info": np.array(json.dumps(self.info)),
        }
        atomic_savez(file, arrays)
        log.info("PCA texture model (%d components, %d px) written to %s", self.latent_dim, self.resolution, file)
        return file

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> PcaTextureModel:
        file = Path(path)
        check_npz(file, "PCA texture model", "refit it (docs/texture-model.md)")  # before numpy reads any data
        try:
            with np.load(file, allow_pickle=False) as data:
                if str(data["kind"]) != "pca":
                    raise ModelDataError(f"{file} is a {data['kind']} model, not PCA")
                if int(data["version"]) > FORMAT_VERSION:
                    raise ModelDataError(f"{file} has PCA format {int(data['version'])}: update ganfit")
                model = cls(
                    torch.from_numpy(data["mean"].astype(np.float32)),
                    torch.from_numpy(data["basis"].astype(np.float32)),
                    torch.from_numpy(data["std"].astype(np.float32)),
                    torch.from_numpy(data["explained_variance_ratio"].astype(np.float32)),
                    json.loads(str(data["info"])),
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelDataError(f"cannot read PCA texture model {file}: {exc}; refit it") from exc
        return model.to(device) if device is not None else model


# --------------------------------------------------------------------------------------------
# Fitting


def fit_pca(folder: str | Path, settings: PcaFitSettings = PcaFitSettings(), split: Split = "train",
            resolution: int | None = None, limit: int | None = None,
            device: str | torch.device = "cpu") -> PcaTextureModel:
    """Fit on ``split`` of a UV folder (``UvTextureSet``), maps resized to ``resolution``."""
    textures = UvTextureSet.open(folder, split)
    log.info("reading %d UV maps from %s", min(len(textures), limit or len(textures)), textures.folder)
    images = textures.load(resolution, limit)
    confidence = textures.load_confidence(resolution, limit) if settings.confidence_weighted_mean else None
    if settings.confidence_weighted_mean and confidence is None:
        log.warning("%s has no confidence maps: using the plain mean", textures.folder)
    model = fit_pca_arrays(images, settings, confidence, device=device)
    model.info.update(data=str(textures.folder), split=split)
    return model


def fit_pca_arrays(images: np.ndarray, settings: PcaFitSettings = PcaFitSettings(),
                   confidence: np.ndarray | None = None, device: str | torch.device = "cpu") -> PcaTextureModel:
    """Fit on ``(N, S, S, 3)`` uint8 RGB maps (``confidence``: ``(N, S, S)`` uint8, optional)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise ValueError(f"expected (N, S, S, 3) uint8 maps, got {images.dtype} {images.shape}")
    n, size = images.shape[0], images.shape[1]
    if n < 2:
        raise ModelDataError("PCA needs at least two UV maps")
    k = min(settings.components, n - 1)
    if k < settings.components:
        log.warning("only %d maps: keeping %d components instead of %d", n, k, settings.components)
    dev = torch.device(device)
    # Rows are maps as (3, S, S) flattened, the layout decode() returns; converted chunk by chunk
    # so the uint8 maps are never copied whole.
    dim = 3 * size * size

    def rows(start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(images[start:stop]).to(dev).permute(0, 3, 1, 2).reshape(-1, dim)

    mean = _mean(rows, n, confidence, settings.chunk, dev)

    def chunks() -> Any:
        for start in range(0, n, settings.chunk):
            yield start, rows(start, start + settings.chunk).float() / 255.0 - mean

    def times(m: torch.Tensor) -> torch.Tensor:  # Xc @ m, (N, l)
        return torch.cat([block @ m for _, block in chunks()])

    def times_t(q: torch.Tensor) -> torch.Tensor:  # Xc^T @ q, (D, l)
        out = torch.zeros(dim, q.shape[1], device=dev)
        for start, block in chunks():
            out += block.T @ q[start:start + block.shape[0]]
        return out

    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    width = min(k + settings.oversample, n)
    omega = torch.randn(dim, width, generator=generator).to(dev)
    q = torch.linalg.qr(times(omega)).Q
    for _ in range(settings.power_iterations):
        q = torch.linalg.qr(times(times_t(q))).Q
    small = times_t(q).T  # Q^T Xc, (l, D)
    _, singular, vt = torch.linalg.svd(small, full_matrices=False)
    variance = singular.square() / (n - 1)
    total = sum(float(block.square().sum()) for _, block in chunks()) / (n - 1)
    model = PcaTextureModel(
        mean.view(3, size, size).cpu(),
        vt[:k].cpu(),
        variance[:k].sqrt().cpu(),
        (variance[:k] / total).cpu(),
        info={"count": n, "settings": asdict(settings), "resolution": size,
              "confidence_weighted_mean": confidence is not None},
    )
    log.info("PCA: %d components explain %.1f%% of the variance of %d maps",
             k, 100 * float(model.explained_variance_ratio.sum()), n)
    return model


def _mean(rows: Any, n: int, confidence: np.ndarray | None, chunk: int, device: torch.device) -> torch.Tensor:
    """Per-texel mean in [0, 1]; with confidence, weighted by it (plain mean where all weights are 0)."""
    total: torch.Tensor | None = None
    weighted_total = weight = torch.zeros((), device=device, dtype=torch.float64)
    for start in range(0, n, chunk):
        block = rows(start, start + chunk).to(torch.float64) / 255.0
        total = block.sum(0) if total is None else total + block.sum(0)
        if confidence is not None:
            conf = torch.from_numpy(confidence[start:start + chunk]).to(device, torch.float64) / 255.0
            w = conf.reshape(conf.shape[0], 1, -1).expand(-1, 3, -1).reshape(conf.shape[0], -1)
            weighted_total = weighted_total + (block * w).sum(0)
            weight = weight + w.sum(0)
    assert total is not None
    plain = total / n
    if confidence is None:
        return plain.float()
    weighted = weighted_total / weight.clamp_min(1e-12)
    return torch.where(weight > 1e-6, weighted, plain).float()


# --------------------------------------------------------------------------------------------
# Command line: `python -m ganfit.texture.pca --data UV_DIR --out pca.npz`


def register(subparsers: Any, name: str = "texture-pca") -> argparse.ArgumentParser:
    """Add the PCA fitting command to a CLI's subparsers; dispatch to ``run``."""
    parser = subparsers.add_parser(name, help="fit the PCA texture model (paper eq. 1) on a UV texture folder")
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="UV texture folder (ganfit texture-dataset output)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("-k", "--components", type=int, default=100, help="principal components (default 100)")
    parser.add_argument("--resolution", type=int, default=None, help="resize the maps to this size first")
    parser.add_argument("--split", default="train", choices=("train", "test", "all"))
    parser.add_argument("--limit", type=int, default=None, help="use at most this many maps")
    parser.add_argument("--confidence-weighted-mean", action="store_true",
                        help="weight the mean by the <stem>_conf.png maps")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    settings = PcaFitSettings(components=args.components, confidence_weighted_mean=args.confidence_weighted_mean)
    model = fit_pca(args.data, settings, split=args.split, resolution=args.resolution, limit=args.limit,
                    device=args.device)
    model.save(args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganfit.texture.pca", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
