"""Train the UV texture GAN (paper 3.1): ``ganfit train-texture`` / ``python -m ganfit.texture.train``.

Loss: non-saturating logistic GAN loss with lazy R1 regularisation on reals (every
``r1_interval`` steps, scaled by the interval; Adam's lr and betas adjusted for the lazy steps as
in StyleGAN2), an exponential moving average of the generator weights (the EMA generator is what
samples, checkpoints' ``G_ema`` and the export use), optional style mixing.

Determinism and resume: every random draw of a step (which training maps, flips, z, style-mixing
cut-off, noise) comes from a generator seeded by ``(seed, step, rank)``, and the data order is a
per-epoch permutation seeded by ``(seed, epoch)``. Nothing depends on hidden RNG state, so a run
resumed from a checkpoint continues exactly as an uninterrupted run would (bit for bit on CPU;
tested), and a resumed run may even use a different number of processes.

Augmentation: horizontal flips (``flip``, on by default). The project's UV layout is mirror
symmetric about u = 0.5 (docs/texture-model.md), so a flipped map is the texture of the mirrored
face: a real face, with left and right halves swapped. On a layout that is not mirror symmetric a
flip would put the left cheek's texels where the right ear is; switch it off there (``--no-flip``).

Several processes: launched with ``torchrun --nproc_per_node=K`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` set), each process takes ``batch / K`` maps of the global batch, and gradients are
averaged over processes before each optimiser step (nccl on CUDA, gloo on CPU) -- data parallel
training as DistributedDataParallel does it. The gradients are averaged with one flattened
``all_reduce`` per optimiser step rather than through the DDP wrapper (the approach of
NVIDIA's StyleGAN2-ADA): a GAN step runs the discriminator in three roles (on fakes for the
generator with its own weights frozen, on reals and fakes for itself, and R1's double backward),
which DDP's bucketed reducer does not support. Only rank 0 writes files; ranks check at every
checkpoint that their weights agree.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from ganfit.errors import GanfitError, ModelDataError
from ganfit.models.limits import check_zip_members
from ganfit.texture.gan import GanConfig, Generator, make_discriminator, save_generator
from ganfit.texture.model import UvTextureSet
from ganfit.texture.pca import PcaFitSettings, fit_pca_arrays

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "config_from_args",
    "export_generator",
    "latest_checkpoint",
    "main",
    "register",
    "run",
    "train_texture",
]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")

#: Architecture presets. ``tiny`` is for tests and CPU smoke runs; ``256`` (the default) is the
#: shipping size (~5 M generator parameters, ~10 MB as float16); ``512`` for more compute;
#: ``256-cpu`` keeps the 256 px output with 4-8x fewer feature maps and starts from the data's
#: mean map (``mean_offset``): 6-8 images/s on a 2-core CPU instead of ~0.2 (measured);
#: ``256-cpu-pca`` adds the linear layer of 64 principal components (``pca_base``).
PRESETS: dict[str, GanConfig] = {
    "tiny": GanConfig(resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16),
    "64": GanConfig(resolution=64, z_dim=128, w_dim=128, mapping_layers=4, channel_base=4096, channel_max=128),
    "256": GanConfig(),
    "256-cpu": GanConfig(resolution=256, z_dim=128, w_dim=128, mapping_layers=4, channel_base=1024, channel_max=128,
                         mean_offset=True),
    "256-cpu-pca": GanConfig(resolution=256, z_dim=128, w_dim=128, mapping_layers=4, channel_base=1024,
                             channel_max=128, mean_offset=True, pca_base=64),
    "pca-latent": GanConfig(resolution=256, z_dim=128, w_dim=128, mapping_layers=4, mapping_lr_mult=0.1,
                            mean_offset=True, pca_base=96, detail=False),
    "512": GanConfig(resolution=512, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=256),
}


@dataclass
class TrainConfig:
    """One training run. ``out`` holds ``config.json``, ``checkpoints/``, ``samples/`` and
    ``stats.jsonl``; ``steps`` counts optimiser steps of the global ``batch``."""

    data: str = ""
    out: str = "texture-gan"
    gan: GanConfig = field(default_factory=GanConfig)
    steps: int = 100_000
    batch: int = 32
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 1.0
    r1_interval: int = 16
    style_mixing: float = 0.9
    #: EMA half-life in thousands of images, ramped up over the first images (rampup * images seen).
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    flip: bool = True
    amp: bool = False
    seed: int = 0
    device: str = "cpu"
    max_images: int | None = None
    #: Stop (with a checkpoint) once this run has trained this many minutes, e.g. to fit a
    #: lent GPU's time; ``steps`` still caps it.
    time_limit_minutes: float | None = None
    checkpoint_every: int = 1000
    sample_every: int = 500
    log_every: int = 50
    keep_checkpoints: int = 3
    grid: int = 4
    quiet: bool = False
    data_source: str = "UTKFace crop_part1 (aligned faces) projected into UV by `ganfit texture-dataset`"
    data_licence: str = "UTKFace: non-commercial research purposes only (https://susanqq.github.io/UTKFace/)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ModelDataError(f"unknown training config fields {sorted(unknown)}")
        gan = values.pop("gan", None)
        config = cls(**values)
        if gan is not None:
            config.gan = gan if isinstance(gan, GanConfig) else GanConfig.from_dict(gan)
        return config


#: Fields that may change when a run is resumed; everything else must match the checkpoint.
RUN_FIELDS = ("steps", "device", "amp", "checkpoint_every", "sample_every", "log_every", "keep_checkpoints",
              "quiet", "out", "data", "max_images", "grid", "data_source", "data_licence", "time_limit_minutes")


@dataclass(frozen=True)
class TrainResult:
    step: int
    images_seen: int
    checkpoint: Path | None
    train_seconds: float
    last_losses: dict[str, float]


# --------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str) -> tuple[_Dist, bool]:
    """Join the process group torchrun describes (if any); returns whether we created it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "RANK" in os.environ and "LOCAL_RANK" in os.environ  # torchrun, even with one process
    if world <= 1 and not launched:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)
        return _Dist(0, 1, 0, dev), False
    if not dist.is_available():
        raise GanfitError("launched by torchrun, but this PyTorch has no torch.distributed")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)  # device_id: no guessing of rank -> GPU
        else:
            dist.init_process_group("gloo")
        created = True
    return _Dist(rank, world, local_rank, dev), created


def _average_gradients(module: torch.nn.Module, ctx: _Dist) -> None:
    """Mean of the gradients over processes, one all_reduce on a flattened buffer."""
    if ctx.world <= 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_module(module: torch.nn.Module, ctx: _Dist) -> None:
    if ctx.world > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _check_in_sync(module: torch.nn.Module, ctx: _Dist) -> None:
    if ctx.world <= 1:
        return
    total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(total) for _ in range(ctx.world)]
    dist.all_gather(gathered, total)
    values = [float(g) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise RuntimeError(f"processes' weights diverged: checksums {values}")
    log.debug("ranks in sync (checksum %.6f)", values[0])


# --------------------------------------------------------------------------------------------
# Data


class _Data:
    """The training maps as uint8 ``(N, 3, R, R)``, with a stateless per-epoch shuffle."""

    def __init__(self, images: torch.Tensor, seed: int) -> None:
        self.images = images
        self.seed = seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Indices of global sample positions ``start .. start + count``."""
        out = []
        n = len(self)
        for position in range(start, start + count):
            epoch, offset = divmod(position, n)
            if self._perm is None or self._perm[0] != epoch:
                gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, 0x5EED))
                self._perm = (epoch, torch.randperm(n, generator=gen))
            out.append(int(self._perm[1][offset]))
        return torch.tensor(out, dtype=torch.long)


def _load_data(config: TrainConfig, device: torch.device) -> _Data:
    textures = UvTextureSet.open(config.data, "train")
    images = textures.load(config.gan.resolution, config.max_images)
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    # The whole set stays on the GPU when it fits comfortably (uint8: 256x256 maps are 192 KB):
    # no data loader can then starve the GPU.
    if device.type == "cuda" and tensor.numel() < 4 * 2**30:
        tensor = tensor.to(device)
    log.info("training on %d UV maps (%s, train split) at %d px", tensor.shape[0], textures.folder,
             config.gan.resolution)
    return _Data(tensor, config.seed)


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# --------------------------------------------------------------------------------------------
# Checkpoints


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out/checkpoints``, or None."""
    folder = Path(out) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*.pt") if (m := _CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path) -> dict[str, Any]:
    # torch allocates each archive member's declared size before reading it: check first.
    check_zip_members(path, "Checkpoint", "delete it to resume from an older one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ModelDataError(f"cannot read checkpoint {path}: {exc}; delete it to resume from an older one") from exc
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise ModelDataError(f"{path} was written by a newer ganfit (checkpoint version {state['version']})")
    return state


# --------------------------------------------------------------------------------------------
# Training


class _Trainer:
    def __init__(self, config: TrainConfig, ctx: _Dist) -> None:
        if config.batch % ctx.world:
            raise GanfitError(f"batch {config.batch} does not split over {ctx.world} processes: make it a multiple")
        if config.gan.pca_base > config.gan.w_dim:  # checked here, not in GanConfig: old exports still load
            raise GanfitError(f"--pca-base {config.gan.pca_base} needs --w-dim {config.gan.pca_base} or more "
                              f"(got {config.gan.w_dim}): the coefficients are an affine map of w")
        self.config = config
        self.ctx = ctx
        self.device = ctx.device
        self.local_batch = config.batch // ctx.world
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, same on every rank
            torch.manual_seed(config.seed)
            self.G = Generator(config.gan).to(self.device)
            self.D = make_discriminator(config.gan).to(self.device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        ratio = config.r1_interval / (config.r1_interval + 1) if config.r1_interval > 0 else 1.0
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2), eps=1e-8)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d * ratio,
                                      betas=(config.beta1**ratio, config.beta2**ratio), eps=1e-8)
        self.step = 0
        self.train_seconds = 0.0
        # GanConfig.detail=False: G's images are mean + components . coefficients and D only sees
        # an image's coefficients, so both players work on the (B, K) coefficients directly --
        # the same game without drawing or projecting 256 px images (~100x faster on a CPU).
        self.latent = not config.gan.detail
        self._coefficients: torch.Tensor | None = None  # (N, 2, K): training maps, mirror images
        self._projection: torch.Tensor | None = None  # (K, K): G's coefficients -> what D sees
        self._r1_weights: torch.Tensor | None = None  # (K,): CoefficientDiscriminator.r1_weights
        self.amp = config.amp and self.device.type == "cuda"
        if config.amp and not self.amp:
            log.info("mixed precision applies to CUDA only; training in float32")

    # State ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "images_seen": self.step * self.config.batch,
            "train_seconds": self.train_seconds,
            "config": self.config.to_dict(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        saved = TrainConfig.from_dict(state["config"])
        mismatched = [f.name for f in dataclasses.fields(TrainConfig)
                      if f.name not in RUN_FIELDS and getattr(saved, f.name) != getattr(self.config, f.name)]
        if mismatched:
            raise GanfitError(f"the checkpoint was trained with other {', '.join(mismatched)}: resume with the "
                              "run's own settings (leave those options out) or start a new --out folder")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._forget_projections()

    def save_checkpoint(self) -> Path:
        out = Path(self.config.out)
        path = out / "checkpoints" / f"checkpoint-{self.step:08d}.pt"
        state = self.state()
        _atomic_write(path, lambda handle: torch.save(state, handle))
        found = sorted((int(m.group(1)), p) for p in path.parent.glob("checkpoint-*.pt")
                       if (m := _CHECKPOINT_RE.match(p.name)))
        for _, old in found[:-max(1, self.config.keep_checkpoints)]:
            old.unlink(missing_ok=True)
        log.info("checkpoint %s", path)
        return path

    # One step ------------------------------------------------------------------------------

    def set_mean_image(self, data: _Data) -> None:
        """Start G (and its EMA copy) from the training maps' mean (``GanConfig.mean_offset``);
        with flip augmentation, the mean of the maps and their mirror images."""
        total = torch.zeros(data.images.shape[1:], dtype=torch.float64, device=data.images.device)
        for start in range(0, len(data), 256):
            total += data.images[start:start + 256].double().sum(0)
        mean = total / len(data) / 127.5 - 1.0
        if self.config.flip:
            mean = 0.5 * (mean + mean.flip(-1))
        for generator in (self.G, self.G_ema):
            generator.synthesis.mean_image.copy_(mean.float())
        if hasattr(self.D, "mean_image"):  # CoefficientDiscriminator: the same projection
            self.D.mean_image.copy_(mean.float())
        self._forget_projections()

    def set_pca_basis(self, data: _Data) -> None:
        """The principal components of the training maps (and, with flip augmentation, their
        mirror images) at ``pca_base_resolution``, scaled by their standard deviations and by 2
        (the networks' [-1, 1] range), into G and its EMA copy (``GanConfig.pca_base``)."""
        size = self.config.gan.pca_size
        chunks = []
        for start in range(0, len(data), 256):
            block = data.images[start:start + 256].float()
            if block.shape[-1] != size:
                block = F.interpolate(block, size=(size, size), mode="area")
            chunks.append(block.round().clamp(0, 255).to(torch.uint8).cpu())
        images = torch.cat(chunks)
        if self.config.flip:
            images = torch.cat([images, images.flip(-1)])
        pca = fit_pca_arrays(images.permute(0, 2, 3, 1).numpy(), PcaFitSettings(components=self.config.gan.pca_base),
                             device=self.device)
        count = pca.basis.shape[0]
        basis = (pca.basis * pca.std[:, None] * 2.0).view(count, 3, size, size)
        # Start the coefficients at zero mean and identity covariance over z, i.e. at PCA's own
        # sample distribution: a randomly initialised affine map of w gave them a mean up to one standard
        # deviation off and a spread of ~0.8 (measured: KID 78 at step 300; normalised, 47).
        head = self.G.synthesis.pca_coefficients
        with torch.no_grad():
            z = torch.randn(4096, self.config.gan.z_dim, generator=torch.Generator().manual_seed(self.config.seed))
            coefficients = head(self.G.mapping(z.to(self.device))).double()
            mean = coefficients.mean(0)
            # Whiten, not only scale: a random affine map of w also correlates the coefficients,
            # and PCA's are uncorrelated. c' = L^-1 (c - mean) with L L^T their covariance.
            covariance = torch.cov(coefficients.T)  # full rank: the trainer asks for w_dim >= pca_base
            covariance += 1e-6 * torch.eye(coefficients.shape[1], dtype=torch.float64, device=coefficients.device)
            inverse = torch.linalg.inv(torch.linalg.cholesky(covariance))
            weight = inverse @ (head.weight.double() * head.weight_gain)
            bias = inverse @ (head.bias.double() * head.bias_gain - mean)
            head.weight.copy_((weight / head.weight_gain).float())
            head.bias.copy_((bias / head.bias_gain).float())
        for generator in (self.G, self.G_ema):
            generator.synthesis.pca_basis.zero_()
            generator.synthesis.pca_basis[:count].copy_(basis.to(self.device))
        self.G_ema.synthesis.pca_coefficients.load_state_dict(head.state_dict())
        if hasattr(self.D, "pca_basis"):
            self.D.pca_basis.copy_(self.G.synthesis.pca_basis)
        self._forget_projections()
        log.info("PCA base: %d components at %d px explain %.1f%% of the variance", count, size,
                 100 * float(pca.explained_variance_ratio.sum()))

    def _random(self) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_mix_seed(self.config.seed, self.step, self.ctx.rank))
        return gen

    def _forget_projections(self) -> None:
        """Drop what was derived from D's mean and components (they were just set or loaded)."""
        self._coefficients = self._projection = self._r1_weights = None

    def _real_coefficients(self, data: _Data) -> torch.Tensor:
        """Every training map's and mirror image's coefficients on D's components, once
        (recomputed on resume from the checkpoint's components)."""
        if self._coefficients is None:
            chunks = []
            with torch.no_grad():
                for start in range(0, len(data), 256):
                    block = data.images[start:start + 256].to(self.device).float() / 127.5 - 1.0
                    chunks.append(torch.stack([self.D.coefficients(block),
                                               self.D.coefficients(block.flip(-1))], dim=1))
            self._coefficients = torch.cat(chunks)
        return self._coefficients

    def _fake_projection(self) -> torch.Tensor:
        """``CoefficientDiscriminator.generator_projection`` of G, once: the resize blur the
        image-space game applies to G's coefficients."""
        if self._projection is None:
            self._projection = self.D.generator_projection(self.G.synthesis)
        return self._projection

    def _reals(self, data: _Data, gen: torch.Generator) -> torch.Tensor:
        start = self.step * self.config.batch + self.ctx.rank * self.local_batch
        index = data.indices(start, self.local_batch).to(data.images.device)
        if self.latent:
            rows = self._real_coefficients(data).index_select(0, index.to(self.device))
            if not self.config.flip:
                return rows[:, 0]
            flip = torch.rand(self.local_batch, generator=gen, device=self.device) < 0.5
            return torch.where(flip[:, None], rows[:, 1], rows[:, 0])
        reals = data.images.index_select(0, index).to(self.device, non_blocking=True).float() / 127.5 - 1.0
        if self.config.flip:
            flip = torch.rand(self.local_batch, generator=gen, device=self.device) < 0.5
            reals = torch.where(flip[:, None, None, None], reals.flip(-1), reals)
        return reals

    def _fakes(self, gen: torch.Generator, update_w_avg: bool = False) -> torch.Tensor:
        cfg = self.config.gan
        z = torch.randn(self.local_batch, cfg.z_dim, generator=gen, device=self.device)
        if self.latent:  # the coefficients D would find in G's image
            # Only z is drawn (the image path also draws style-mixing numbers that detail=False
            # ignores), so later draws of a step differ from the image path's: the same game in
            # distribution, not draw for draw. float32 like the image path's linear decoder.
            w = self.G.mapping(z, update_w_avg=update_w_avg)
            with torch.autocast(self.device.type, enabled=False):
                return self.G.synthesis.pca_coefficients(w.float()) @ self._fake_projection()
        ws = self.G.mapping(z, update_w_avg=update_w_avg)[:, None, :].repeat(1, cfg.num_ws, 1)
        mix = torch.rand((), generator=gen, device=self.device)
        cutoff = int(torch.randint(1, cfg.num_ws, (), generator=gen, device=self.device)) if cfg.num_ws > 1 else 1
        z2 = torch.randn(self.local_batch, cfg.z_dim, generator=gen, device=self.device)
        if float(mix) < self.config.style_mixing and cfg.num_ws > 1:
            ws2 = self.G.mapping(z2)
            ws = torch.cat([ws[:, :cutoff], ws2[:, None, :].expand(-1, cfg.num_ws - cutoff, -1)], dim=1)
        return self.G.synthesis(ws, noise_mode="random" if cfg.noise else "none", generator=gen)

    def train_step(self, data: _Data) -> dict[str, float]:
        cfg = self.config
        gen = self._random()
        autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

        # Generator: non-saturating loss softplus(-D(G(z))), discriminator frozen.
        self.D.requires_grad_(False)
        with autocast:
            fakes = self._fakes(gen, update_w_avg=True)
            loss_g = F.softplus(-self._discriminate(fakes)).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        _average_gradients(self.G, self.ctx)
        self.opt_g.step()
        self.D.requires_grad_(True)

        # Discriminator: softplus(D(fake)) + softplus(-D(real)), plus lazy R1 on reals.
        reals = self._reals(data, gen)
        do_r1 = cfg.r1_interval > 0 and cfg.r1_gamma > 0 and self.step % cfg.r1_interval == 0
        with torch.no_grad(), autocast:
            fakes = self._fakes(gen)
        if do_r1:
            reals.requires_grad_(True)
        with autocast:
            logits_fake = self._discriminate(fakes.detach()).float()
            logits_real = self._discriminate(reals).float()
        loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        total_d = loss_d
        r1 = torch.zeros((), device=self.device)
        if do_r1:
            (grad,) = torch.autograd.grad(logits_real.sum(), reals, create_graph=True)
            if self.latent:  # the image gradient's squared norm, from the coefficients' gradient
                if self._r1_weights is None:
                    self._r1_weights = self.D.r1_weights()
                r1 = (grad.float().square() * self._r1_weights).sum(dim=1).mean()
            else:
                r1 = grad.float().square().sum(dim=(1, 2, 3)).mean()
            total_d = loss_d + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
        self.opt_d.zero_grad(set_to_none=True)
        total_d.backward()
        _average_gradients(self.D, self.ctx)
        self.opt_d.step()

        self._update_ema()
        self.step += 1
        stats = {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()),
                 "real": float(logits_real.detach().mean()), "fake": float(logits_fake.detach().mean())}
        if do_r1:
            stats["r1"] = float(r1.detach())
        return stats

    def _discriminate(self, x: torch.Tensor) -> torch.Tensor:
        return self.D.classify(x) if self.latent else self.D(x)

    def _update_ema(self) -> None:
        cfg = self.config
        half_life = cfg.ema_kimg * 1000.0
        seen = (self.step + 1) * cfg.batch
        if cfg.ema_rampup is not None:
            half_life = min(half_life, seen * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(half_life, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    # Pictures ------------------------------------------------------------------------------

    def grid_latents(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_mix_seed(self.config.seed, 0x6121D))
        return torch.randn(self.config.grid**2, self.config.gan.z_dim, generator=gen).to(self.device)

    def save_samples(self, path: Path) -> None:
        with torch.no_grad():
            images = self.G_ema(self.grid_latents(), noise_mode="const" if self.config.gan.noise else "none")
        _save_grid(images, path, self.config.grid)


def _save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """Images in [-1, 1] ``(N, 3, R, R)`` as one PNG, ``columns`` per row."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    n, _, size, _ = pixels.shape
    rows = math.ceil(n / columns)
    sheet = np.zeros((rows * size, columns * size, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = pixels[i].transpose(1, 2, 0)
    _atomic_write(path, lambda handle: Image.fromarray(sheet).save(handle, format="PNG"))


def train_texture(config: TrainConfig, resume: bool | str | Path = False) -> TrainResult:
    """Train (or continue) a texture GAN; see the module docstring. ``resume``: True = the latest
    checkpoint in ``config.out`` (a fresh start when there is none), or a checkpoint path."""
    ctx, created_group = _setup_distributed(config.device)
    try:
        return _train(config, resume, ctx)
    finally:
        if created_group:
            dist.barrier()
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: bool | str | Path, ctx: _Dist) -> TrainResult:
    from tqdm.auto import tqdm

    out = Path(config.out)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer = _Trainer(config, ctx)
    checkpoint: Path | None = None
    if resume:
        checkpoint = latest_checkpoint(out) if resume is True else Path(resume)
        if checkpoint is not None:
            trainer.load_state(_load_checkpoint(checkpoint))
            log.info("resumed from %s at step %d", checkpoint, trainer.step)
        else:
            log.info("no checkpoint in %s: starting from step 0", out / "checkpoints")
    elif latest_checkpoint(out) is not None:  # every rank checks, so none waits for a failed rank 0
        raise GanfitError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    _broadcast_module(trainer.G, ctx)
    _broadcast_module(trainer.G_ema, ctx)
    _broadcast_module(trainer.D, ctx)
    losses: dict[str, float] = {}
    if trainer.step >= config.steps:
        log.info("already at step %d of %d: nothing to train", trainer.step, config.steps)
        return TrainResult(trainer.step, trainer.step * config.batch, checkpoint, trainer.train_seconds, losses)

    data = _load_data(config, ctx.device)
    if trainer.step == 0 and config.gan.mean_offset:
        trainer.set_mean_image(data)
    if trainer.step == 0 and config.gan.pca_base:
        trainer.set_pca_basis(data)
    if trainer.step == 0 and (config.gan.mean_offset or config.gan.pca_base):
        _broadcast_module(trainer.G, ctx)  # every rank computed them; rank 0's are the run's
        _broadcast_module(trainer.G_ema, ctx)
        _broadcast_module(trainer.D, ctx)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "config.json", lambda h: h.write(json.dumps(config.to_dict(), indent=2).encode()))
        reals_png = out / "samples" / "reals.png"
        if not reals_png.exists():
            count = min(config.grid**2, len(data))
            reals = data.images[:count].float() / 127.5 - 1.0
            _save_grid(reals, reals_png, config.grid)

    stats_file = out / "stats.jsonl"
    bar = tqdm(total=config.steps, initial=trainer.step, desc="train-texture", unit="step",
               disable=config.quiet or not ctx.main, dynamic_ncols=True)
    window: list[dict[str, float]] = []
    first_step = trainer.step
    started = time.perf_counter()
    last_tick = started
    try:
        while trainer.step < config.steps:
            losses = trainer.train_step(data)
            window.append(losses)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("loss_g", "loss_d", "r1")},
                            refresh=False)
            step = trainer.step
            now = time.perf_counter()
            trainer.train_seconds += now - last_tick
            last_tick = now
            if ctx.main and (step % config.log_every == 0 or step == config.steps):
                _append_stats(stats_file, step, trainer, window)
                window = []
            if config.sample_every > 0 and (step % config.sample_every == 0 or step == config.steps) and ctx.main:
                trainer.save_samples(out / "samples" / f"step-{step:08d}.png")
            out_of_time = (config.time_limit_minutes is not None
                           and now - started >= 60.0 * config.time_limit_minutes)
            if ctx.world > 1 and config.time_limit_minutes is not None:  # every rank stops at the same step
                flag = torch.tensor([float(out_of_time)], device=ctx.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if out_of_time or (config.checkpoint_every > 0
                               and (step % config.checkpoint_every == 0 or step == config.steps)):
                _check_in_sync(trainer.G, ctx)
                if ctx.main:
                    checkpoint = trainer.save_checkpoint()
                if ctx.world > 1:
                    dist.barrier()
            if out_of_time:
                log.info("time limit of %g minutes reached at step %d", config.time_limit_minutes, step)
                break
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    log.info("trained to step %d (%.1f s this run, %.3f s/step)", trainer.step, elapsed,
             elapsed / max(1, trainer.step - first_step))
    return TrainResult(trainer.step, trainer.step * config.batch, checkpoint, trainer.train_seconds, losses)


def window_means(window: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic's mean over the steps that logged it (rounded for stats.jsonl)."""
    means = {}
    for key in sorted({k for w in window for k in w}):
        values = [w[key] for w in window if key in w]
        means[key] = round(sum(values) / len(values), 5)
    return means


def _append_stats(path: Path, step: int, trainer: _Trainer, window: list[dict[str, float]]) -> None:
    record: dict[str, Any] = {"step": step, "images": step * trainer.config.batch,
                              "seconds": round(trainer.train_seconds, 3)} | window_means(window)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------
# Export


def export_generator(checkpoint: str | Path, out: str | Path, quality: dict[str, Any] | None = None) -> Path:
    """The checkpoint's EMA generator as float16 weights (``gan.save_generator``) plus a
    provenance JSON beside them (``<out>.json``): data and licence, config, steps, time, quality."""
    from ganfit import __version__

    state = _load_checkpoint(Path(checkpoint))
    config = TrainConfig.from_dict(state["config"])
    generator = Generator(config.gan)
    generator.load_state_dict(state["G_ema"])
    generator.eval()
    provenance: dict[str, Any] = {
        "model": "StyleGAN2-style UV texture generator (EMA weights), ganfit.texture.gan",
        "weights": Path(out).name,
        "data": {"folder": config.data, "source": config.data_source, "licence": config.data_licence,
                 "split": "train", "max_images": config.max_images},
        "licence_note": "Weights trained on this data inherit its terms: " + config.data_licence,
        "config": config.to_dict(),
        "steps": int(state["step"]),
        "images_seen": int(state["images_seen"]),
        "train_seconds": round(float(state.get("train_seconds", 0.0)), 1),
        "checkpoint": str(checkpoint),
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ganfit_version": __version__,
        "torch_version": torch.__version__,
        "quality": quality or {"kid_heldout": None, "note": "fill in with benchmarks/texture_prior_table.py "
                                                            "--update-provenance"},
    }
    info = {k: provenance[k] for k in ("model", "steps", "images_seen")} | {"licence": config.data_licence}
    file = save_generator(generator, out, info)
    provenance["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    provenance["bytes"] = file.stat().st_size
    json_path = file.with_suffix(".json")
    _atomic_write(json_path, lambda h: h.write((json.dumps(provenance, indent=2) + "\n").encode()))
    log.info("provenance written to %s", json_path)
    return file


# --------------------------------------------------------------------------------------------
# Command line


def register(subparsers: Any, name: str = "train-texture") -> argparse.ArgumentParser:
    """Add ``train-texture`` to a CLI's subparsers; the parser's ``func`` is ``run``."""
    parser = subparsers.add_parser(name, help="train the UV texture GAN (docs/texture-model.md)",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that, on --resume, only what was given overrides the run's config.json.
    add = parser.add_argument
    add("--data", default=None, help="UV texture folder from `ganfit texture-dataset` (its train split)")
    add("--out", required=True, help="run folder: config.json, checkpoints/, samples/, stats.jsonl")
    add("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
        help="continue from the latest checkpoint in --out (or the given file)")
    add("--preset", choices=sorted(PRESETS), default=None, help="architecture (default 256)")
    add("--resolution", type=int, default=None, help="override the preset's resolution (power of two, 8..1024)")
    add("--channel-base", type=int, default=None)
    add("--channel-max", type=int, default=None)
    add("--z-dim", type=_positive, default=None, help="override the preset's latent size")
    add("--w-dim", type=_positive, default=None,
        help="override the preset's w size (with --pca-base K, the coefficients span at most this many "
             "dimensions: use at least K)")
    add("--mapping-layers", type=_positive, default=None, help="override the preset's mapping depth")
    add("--mapping-lr-mult", type=float, default=None,
        help="learning-rate factor of the mapping network (StyleGAN: 0.01; a PCA-latent GAN's whole generator)")
    add("--d-width", type=_positive, default=None, help="width of the coefficient discriminator (PCA-latent)")
    add("--no-noise", action="store_true", default=None, help="no per-pixel noise inputs")
    add("--mean-offset", action="store_true", default=None,
        help="start the generator from the training maps' mean map (short runs, e.g. on a CPU)")
    add("--pca-base", type=_non_negative, default=None, metavar="K",
        help="add a linear layer of the training maps' K principal components (implies --mean-offset)")
    add("--pca-base-resolution", type=int, default=None, metavar="PX",
        help="store the components at this size (default 256; 128 makes the weights 4x smaller)")
    add("--steps", type=int, default=None, help="optimiser steps in total (default 100000)")
    add("--batch", type=int, default=None, help="global batch, split over processes (default 32)")
    add("--lr", type=float, default=None, help="Adam learning rate of G and D (default 0.0025)")
    add("--r1-gamma", type=float, default=None, help="R1 weight (default 1)")
    add("--r1-interval", type=int, default=None, help="R1 every N steps (default 16)")
    add("--style-mixing", type=float, default=None, help="style-mixing probability (default 0.9)")
    add("--ema-kimg", type=float, default=None, help="EMA half-life in thousands of images (default 10)")
    add("--no-flip", action="store_true", default=None, help="no horizontal-flip augmentation")
    add("--amp", action="store_true", default=None, help="bfloat16 autocast on CUDA")
    add("--seed", type=int, default=None)
    add("--device", default=None, help="cpu (default) or cuda; under torchrun each process takes cuda:LOCAL_RANK")
    add("--max-images", type=int, default=None, help="train on at most this many maps")
    add("--time-limit", type=float, default=None, metavar="MINUTES",
        help="stop with a checkpoint after this many minutes of training (then --export, if given)")
    add("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 1000)")
    add("--sample-every", type=int, default=None, help="steps between sample grids (default 500)")
    add("--log-every", type=int, default=None, help="steps between stats.jsonl lines (default 50)")
    add("--keep-checkpoints", type=int, default=None, help="checkpoints kept (default 3)")
    add("--grid", type=int, default=None, help="sample grid side (default 4: 16 samples)")
    add("--export", default=None, metavar="FILE",
        help="after training, write the EMA generator (float16 .npz) and FILE.json provenance")
    add("--data-source", default=None, help="what the UV maps were made from, for the provenance file "
                                             "(default: UTKFace crop_part1)")
    add("--data-licence", default=None, help="the data's licence, for the provenance file "
                                              "(default: UTKFace, non-commercial research only)")
    add("-q", "--quiet", action="store_true", default=None, help="no progress bar")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value
    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: ``out/config.json`` when resuming, else defaults; then the options given."""
    saved = Path(args.out) / "config.json"
    config = TrainConfig.from_dict(json.loads(saved.read_text())) if args.resume and saved.is_file() else TrainConfig()
    config.out = str(args.out)
    config.time_limit_minutes = None  # a limit is for one run: a resumed run gets its own or none
    gan = config.gan
    if args.preset is not None:
        gan = PRESETS[args.preset]
    overrides = {"resolution": args.resolution, "channel_base": args.channel_base, "channel_max": args.channel_max,
                 "z_dim": args.z_dim, "w_dim": args.w_dim, "mapping_layers": args.mapping_layers,
                 "mapping_lr_mult": args.mapping_lr_mult, "coefficient_d_width": args.d_width,
                 "noise": False if args.no_noise else None,
                 "mean_offset": True if args.mean_offset or args.pca_base else None,
                 "pca_base": args.pca_base, "pca_base_resolution": args.pca_base_resolution}
    try:
        gan = dataclasses.replace(gan, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:  # GanConfig's own checks, as one line (the options are named in it)
        raise GanfitError(f"invalid architecture: {exc}") from exc
    config.gan = gan
    simple = {"data": args.data, "steps": args.steps, "batch": args.batch, "r1_gamma": args.r1_gamma,
              "r1_interval": args.r1_interval, "style_mixing": args.style_mixing, "ema_kimg": args.ema_kimg,
              "amp": args.amp, "seed": args.seed, "device": args.device, "max_images": args.max_images,
              "time_limit_minutes": args.time_limit,
              "checkpoint_every": args.checkpoint_every, "sample_every": args.sample_every,
              "log_every": args.log_every, "keep_checkpoints": args.keep_checkpoints, "grid": args.grid,
              "quiet": args.quiet, "data_source": args.data_source, "data_licence": args.data_licence}
    for key, value in simple.items():
        if value is not None:
            setattr(config, key, value)
    if args.lr is not None:
        config.lr_g = config.lr_d = args.lr
    if args.no_flip:
        config.flip = False
    return config


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    resume: bool | str = False if args.resume is None else (True if args.resume == "latest" else args.resume)
    if not config.data and not (resume and latest_checkpoint(config.out)):
        raise GanfitError("--data is required (a UV texture folder from `ganfit texture-dataset`)")
    result = train_texture(config, resume)
    if args.export and int(os.environ.get("RANK", "0")) == 0:
        checkpoint = result.checkpoint or latest_checkpoint(config.out)
        if checkpoint is None:
            raise GanfitError(f"no checkpoint in {config.out} to export: train first")
        export_generator(checkpoint, args.export)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganfit.texture.train", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except GanfitError as exc:
        log.error("%s", exc)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
