"""``ganfit train-texture-detail``: train the detail stage (``texture/detail.py``) of an exported
PCA-latent GAN on patches of the UV set, and export GAN + detail as one file.

    ganfit train-texture-detail --data UV_DIR --gan gan.npz --out RUN [--steps 3000] [--time-limit MIN] [--resume]
    ganfit train-texture-detail --out RUN --export texture_gan.npz

Reals are the training maps paired with their projection onto the GAN's own components (what
the GAN could have drawn for that face); fakes pair the same projection with projection +
generated residual. Both residuals are high-passed identically, so the discriminator can only
judge the detail. Patches are cut at multiples of the high-pass cell, three quarters of them
centred in the face region (most of the layout is flat filler), mirrored at random (the layout
is left-right symmetric). ``RUN`` holds ``config.json``, ``checkpoints/``, ``samples/`` (coarse |
with detail | coarse + the real residual high-passed, for four training maps) and ``stats.jsonl``; rerunning with ``--resume``
continues from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ganfit.errors import GanfitError, ModelDataError
from ganfit.models.limits import check_npz
from ganfit.fit.reconstruct import resolve_device
from ganfit.texture.detail import (
    DetailConfig,
    DetailNetwork,
    PatchDiscriminator,
    detail_arrays,
    high_pass,
    layout_coordinates,
)
from ganfit.texture.gan import FORMAT_VERSION, CoefficientDiscriminator, load_generator, write_export
from ganfit.texture.model import UvTextureSet
from ganfit.texture.train import (
    _CHECKPOINT_RE,
    _atomic_write,
    _load_checkpoint,
    _mix_seed,
    _save_grid,
    latest_checkpoint,
    window_means,
)
from ganfit.texture.uv_layout import face_region_mask

__all__ = ["DetailTrainConfig", "export_with_detail", "main", "register", "run", "train_detail"]

log = logging.getLogger(__name__)

_KEEP_CHECKPOINTS = 2
_SAMPLE_MAPS = 4


@dataclass
class DetailTrainConfig:
    """One detail-stage run; ``steps`` counts optimiser steps of ``batch`` patches."""

    data: str
    gan: str
    out: str
    steps: int = 3000
    batch: int = 16
    patch: int = 64
    face_share: float = 0.75
    lr: float = 4e-4
    r1_gamma: float = 0.05
    #: Weight of the mean absolute difference between generated and real residual (pix2pix's
    #: reconstruction term, in residual_scale units), beside the adversarial loss. Without it, a
    #: CPU's few thousand steps drew speckles and bubbles (docs/texture-model.md).
    l1_weight: float = 10.0
    r1_every: int = 4
    d_channels: int = 32
    detail: DetailConfig = field(default_factory=DetailConfig)
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 50
    time_limit_minutes: float | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        factor = self.detail.factor
        if self.patch < 4 * factor or self.patch % factor or self.patch > self.detail.resolution:
            raise ValueError(f"--patch {self.patch}: choose a multiple of {factor} from {4 * factor} "
                             f"to {self.detail.resolution}")
        if not 0.0 <= self.face_share <= 1.0:
            raise ValueError(f"--face-share {self.face_share}: choose from 0 to 1")
        if self.l1_weight < 0 or self.r1_gamma < 0 or self.lr <= 0 or self.r1_every < 1:
            raise ValueError("--l1-weight and --r1-gamma must be >= 0, --lr > 0 and r1_every >= 1")
        if self.detail.residual_scale <= 0:
            raise ValueError(f"residual_scale must be positive, got {self.detail.residual_scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetailTrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["detail"] = DetailConfig(**values.get("detail", {}))
        return cls(**values)


def _require_latent_gan(convolutional: bool, components: int, path: str) -> None:
    if convolutional or not components:
        raise GanfitError(f"{path} is not a PCA-latent GAN (train-texture --preset pca-latent): the detail stage "
                          "adds detail to a GAN whose maps lie in its components' span")


class _Pairs:
    """Training maps as float16 ``(coarse, residual)`` pairs in [-1, 1] (``residual`` = map -
    coarse, not yet high-passed), and the patch sampler. The real residual is high-passed per
    patch, as the generator's is: high-passing whole maps and then cutting patches differed in
    the outer texels (the bilinear upsampling's border), a cue the discriminator could use."""

    def __init__(self, config: DetailTrainConfig, device: torch.device) -> None:
        generator, _, _, _ = load_generator(config.gan)
        gan = generator.config
        _require_latent_gan(gan.detail, gan.pca_base, config.gan)
        if gan.resolution != config.detail.resolution:
            raise GanfitError(f"{config.gan} draws {gan.resolution} px maps; the detail stage was configured "
                              f"for {config.detail.resolution}")
        synthesis = generator.synthesis.to(device)
        projection = CoefficientDiscriminator(gan).to(device)
        projection.mean_image.copy_(synthesis.mean_image)
        projection.pca_basis.copy_(synthesis.pca_basis)
        maps = UvTextureSet.open(config.data, "train").load(gan.resolution)
        if len(maps) == 0:
            raise GanfitError(f"{config.data} has no training maps")
        coarse, residual = [], []
        with torch.no_grad():
            for start in range(0, len(maps), 64):
                x = torch.from_numpy(np.ascontiguousarray(maps[start:start + 64].transpose(0, 3, 1, 2)))
                x = x.to(device).float() / 127.5 - 1.0
                c = synthesis.mean_image + synthesis.coefficient_image(projection.coefficients(x))
                coarse.append(c.half())
                residual.append((x - c).half())
        self.coarse = torch.cat(coarse)
        self.residual = torch.cat(residual)
        self.size = gan.resolution
        self.patch = config.patch
        self.factor = config.detail.factor
        self.face_share = config.face_share
        self.coordinates = layout_coordinates(self.size).to(device)
        self.face_texels = torch.nonzero(face_region_mask(self.size) > 0.5).to(device)
        log.info("detail stage: %d training maps at %d px paired with their projection on %d components",
                 len(self), self.size, gan.pca_base)

    def __len__(self) -> int:
        return self.coarse.shape[0]

    def batch(self, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``count`` patches: coarse, real residual (high-passed) and coordinates ``(count, C, P, P)``,
        float32."""
        device = self.coarse.device
        index = torch.randint(len(self), (count,), generator=gen, device=device)
        span = self.size - self.patch
        corner = torch.randint(0, span + 1, (count, 2), generator=gen, device=device)
        in_face = torch.rand(count, generator=gen, device=device) < self.face_share
        centre = self.face_texels[torch.randint(len(self.face_texels), (count,), generator=gen, device=device)]
        corner = torch.where(in_face[:, None], (centre - self.patch // 2).clamp(0, span), corner)
        corner = corner // self.factor * self.factor
        flip = torch.rand(count, generator=gen, device=device) < 0.5
        out: list[list[torch.Tensor]] = [[], [], []]
        for i in range(count):
            (y, x), n = corner[i].tolist(), int(index[i])
            window = (slice(None), slice(y, y + self.patch), slice(x, x + self.patch))
            parts = (self.coarse[n][window].float(), self.residual[n][window].float(), self.coordinates[window])
            for slot, part in zip(out, parts):
                slot.append(part.flip(-1) if flip[i] else part)
        coarse, residual, coordinates = (torch.stack(slot) for slot in out)
        return coarse, high_pass(residual, self.factor), coordinates


class _DetailTrainer:
    def __init__(self, config: DetailTrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, the caller's RNG untouched
            torch.manual_seed(config.seed)
            self.G = DetailNetwork(config.detail).to(device)
            self.D = PatchDiscriminator(config.d_channels).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=(0.5, 0.99))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=(0.5, 0.99))
        self.step = 0
        self.train_seconds = 0.0
        self.gan_sha256 = _sha256(Path(config.gan))

    def state(self) -> dict[str, Any]:
        return {"version": 1, "kind": "texture-detail", "step": self.step, "config": self.config.to_dict(),
                "G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "train_seconds": self.train_seconds, "gan_sha256": self.gan_sha256}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "texture-detail":
            raise ModelDataError("not a train-texture-detail checkpoint")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if state.get("gan_sha256") not in (None, self.gan_sha256):
            raise GanfitError(f"{self.config.gan} changed since this run started: use another --out")

    def save_checkpoint(self, out: Path) -> Path:
        path = out / "checkpoints" / f"checkpoint-{self.step:08d}.pt"
        state = self.state()
        _atomic_write(path, lambda handle: torch.save(state, handle))
        found = sorted((int(m.group(1)), p) for p in path.parent.glob("checkpoint-*.pt")
                       if (m := _CHECKPOINT_RE.match(p.name)))
        for _, old in found[:-_KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        return path

    def train_step(self, pairs: _Pairs) -> dict[str, float]:
        config = self.config
        gen = torch.Generator(device=self.device).manual_seed(_mix_seed(config.seed, self.step))
        coarse, real_residual, coordinates = pairs.batch(config.batch, gen)
        noise = torch.randn(coarse.shape[0], 1, *coarse.shape[-2:], generator=gen, device=self.device)
        scale = config.detail.residual_scale
        real_residual = real_residual / scale
        fake_residual = self.G.patch(coarse, coordinates, noise) / scale

        self.opt_d.zero_grad(set_to_none=True)
        d_real = self.D(coarse, real_residual, coordinates)
        d_fake = self.D(coarse, fake_residual.detach(), coordinates)
        loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        stats = {"loss_d": float(loss_d.detach()), "d_real": float(d_real.detach().mean()),
                 "d_fake": float(d_fake.detach().mean())}
        if config.r1_gamma > 0 and self.step % config.r1_every == 0:
            real_in = real_residual.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(coarse, real_in, coordinates).sum(), real_in, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            loss_d = loss_d + 0.5 * config.r1_gamma * config.r1_every * r1
            stats["r1"] = float(r1.detach())
        loss_d.backward()
        self.opt_d.step()

        self.opt_g.zero_grad(set_to_none=True)
        loss_g = F.softplus(-self.D(coarse, fake_residual, coordinates)).mean()
        l1 = (fake_residual - real_residual).abs().mean()
        (loss_g + config.l1_weight * l1).backward()
        self.opt_g.step()
        stats["loss_g"] = float(loss_g.detach())
        stats["l1"] = float(l1.detach())
        stats["residual_std"] = float(fake_residual.detach().std())
        self.step += 1
        return stats

    def save_samples(self, pairs: _Pairs, path: Path) -> None:
        """Coarse | with detail | coarse + the real residual high-passed (what the generator
        aims at), for the first training maps."""
        with torch.no_grad():
            coarse = pairs.coarse[:_SAMPLE_MAPS].float()
            real = coarse + high_pass(pairs.residual[:_SAMPLE_MAPS].float(), pairs.factor)
            rows = [coarse, coarse + self.G(coarse), real]
            grid = torch.stack(rows, dim=1).flatten(0, 1)
        _save_grid(grid, path, 3)


def train_detail(config: DetailTrainConfig, resume: bool = False) -> Path | None:
    """Train (or continue) the detail stage; returns the last checkpoint written."""
    from tqdm.auto import tqdm

    out = Path(config.out)
    device = torch.device(config.device)
    trainer = _DetailTrainer(config, device)
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise GanfitError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint)
        saved = DetailTrainConfig.from_dict(state["config"])
        if (saved.detail, saved.gan, saved.d_channels) != (config.detail, config.gan, config.d_channels):
            raise GanfitError(f"{checkpoint} was trained with another --gan or architecture: use another --out")
        trainer.load_state(state)
        log.info("resumed from %s at step %d", checkpoint, trainer.step)
    if trainer.step >= config.steps:
        log.info("already at step %d of %d: nothing to train", trainer.step, config.steps)
        return checkpoint
    pairs = _Pairs(config, device)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "config.json", lambda h: h.write(json.dumps(config.to_dict(), indent=2).encode()))
    bar = tqdm(total=config.steps, initial=trainer.step, desc="train-texture-detail", unit="step",
               disable=config.quiet, dynamic_ncols=True)
    window: list[dict[str, float]] = []
    started = last = time.perf_counter()
    try:
        while trainer.step < config.steps:
            stats = trainer.train_step(pairs)
            window.append(stats)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if k in ("loss_g", "loss_d")}, refresh=False)
            now = time.perf_counter()
            trainer.train_seconds += now - last
            last = now
            step = trainer.step
            final = step == config.steps
            if step % config.log_every == 0 or final:
                record = {"step": step, "seconds": round(trainer.train_seconds, 2)} | window_means(window)
                with (out / "stats.jsonl").open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                window = []
            if config.sample_every > 0 and (step % config.sample_every == 0 or final):
                trainer.save_samples(pairs, out / "samples" / f"step-{step:08d}.png")
            out_of_time = config.time_limit_minutes is not None and now - started >= 60 * config.time_limit_minutes
            if out_of_time or final or (config.checkpoint_every > 0 and step % config.checkpoint_every == 0):
                checkpoint = trainer.save_checkpoint(out)
            if out_of_time:
                log.info("time limit of %g minutes reached at step %d", config.time_limit_minutes, step)
                break
    finally:
        bar.close()
    return checkpoint


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_with_detail(checkpoint: str | Path, out: str | Path) -> Path:
    """One file: the run's GAN export plus its detail network (format 3), and a provenance JSON
    beside it (the GAN's, with a ``detail`` section; quality figures cleared: re-measure them
    with benchmarks/texture_prior_table.py --update-provenance). Everything is read and checked
    before anything is written; the GAN must be the file the stage was trained on."""
    from ganfit import __version__

    state = _load_checkpoint(Path(checkpoint))
    if state.get("kind") != "texture-detail":
        raise GanfitError(f"{checkpoint} is not a train-texture-detail checkpoint")
    config = DetailTrainConfig.from_dict(state["config"])
    network = DetailNetwork(config.detail)
    network.load_state_dict(state["G"])
    gan_file, file = Path(config.gan), Path(out)
    if file.resolve() == gan_file.resolve():
        raise GanfitError(f"--export {out} is the GAN the stage was trained on: choose another file")
    try:
        gan_sha = _sha256(gan_file)
        check_npz(gan_file, "GAN texture weights", "export it again with ganfit train-texture --export")
        with np.load(gan_file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if not key.startswith("detail/")}
        info = json.loads(str(arrays["info"]))
        gan_json = gan_file.with_suffix(".json")
        provenance: dict[str, Any] = json.loads(gan_json.read_text()) if gan_json.is_file() else {}
    except (OSError, KeyError, ValueError) as exc:
        raise ModelDataError(f"cannot read the run's GAN {gan_file} or its provenance: {exc}") from exc
    if state.get("gan_sha256") not in (None, gan_sha):
        raise GanfitError(f"{gan_file} changed since the detail stage was trained on it: train again")
    detail_info = {"model": "detail stage (ganfit.texture.detail), patch GAN on the UV set", "steps": int(state["step"]),
                   "train_seconds": round(float(state.get("train_seconds", 0.0)), 1),
                   "config": config.to_dict(), "checkpoint": str(checkpoint)}
    info |= {"detail": {k: detail_info[k] for k in ("model", "steps")}}
    arrays |= detail_arrays(network) | {"info": np.array(json.dumps(info)), "version": np.array(FORMAT_VERSION)}
    file.parent.mkdir(parents=True, exist_ok=True)
    write_export(file, arrays)
    provenance |= {
        "weights": file.name,
        "detail": detail_info | {"exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                 "ganfit_version": __version__},
        "gan_weights": {"file": gan_file.name, "sha256": gan_sha},
        "quality": {"kid_heldout": None, "note": "GAN + detail: fill in with benchmarks/texture_prior_table.py "
                                                 "--update-provenance"},
        "sha256": _sha256(file),
        "bytes": file.stat().st_size,
    }
    _atomic_write(file.with_suffix(".json"), lambda h: h.write((json.dumps(provenance, indent=2) + "\n").encode()))
    log.info("GAN with detail stage (%.1f MB) written to %s", file.stat().st_size / 2**20, file)
    return file


# --------------------------------------------------------------------------------------------
# Command line


def register(subparsers: Any, name: str = "train-texture-detail") -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help="train the detail stage of a PCA-latent texture GAN",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DetailTrainConfig(data="", gan="", out="")
    parser.add_argument("--data", help="UV texture folder (ganfit texture-dataset); its train split is used")
    parser.add_argument("--gan", help="an exported PCA-latent GAN (train-texture --preset pca-latent --export)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, samples, stats)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="patches per step")
    parser.add_argument("--patch", type=int, default=defaults.patch, help="patch size in texels")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--r1-gamma", type=float, default=defaults.r1_gamma)
    parser.add_argument("--l1-weight", type=float, default=defaults.l1_weight,
                        help="weight of the reconstruction term beside the adversarial loss (0: adversarial only)")
    parser.add_argument("--channels", type=int, default=defaults.detail.channels, help="detail network width")
    parser.add_argument("--layers", type=int, default=defaults.detail.layers, help="detail network depth")
    parser.add_argument("--cutoff", type=int, default=None,
                        help="detail is finer than this many texels across the map (default: a quarter of "
                             "the GAN's resolution, 64 at 256 px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--sample-every", type=int, default=defaults.sample_every)
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="stop (with a checkpoint) after this many minutes")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--export", metavar="NPZ", default=None,
                        help="write GAN + detail from the latest checkpoint to this file (after training, if asked)")
    parser.add_argument("-q", "--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    train = args.data is not None or args.gan is not None
    if train:
        if not args.data or not args.gan:
            raise GanfitError("train-texture-detail: give both --data UV_DIR and --gan GAN.npz (or only --export)")
        if not Path(args.data).is_dir():
            raise GanfitError(f"--data {args.data}: no such folder (build one with ganfit texture-dataset)")
        if not Path(args.gan).is_file():
            raise GanfitError(f"--gan {args.gan}: no such file (export one with ganfit train-texture --export)")
        for flag in ("steps", "batch", "channels"):
            if getattr(args, flag) < 1:
                raise GanfitError(f"--{flag} {getattr(args, flag)}: choose a positive number")
        device = resolve_device(args.device)
        check_npz(Path(args.gan), "GAN texture weights", "export one with ganfit train-texture --export")
        try:
            with np.load(args.gan, allow_pickle=False) as data:
                kind, gan = str(data["kind"]), json.loads(str(data["config"]))
        except (OSError, KeyError, ValueError) as exc:
            raise GanfitError(f"--gan {args.gan}: not a ganfit GAN export ({exc})") from exc
        if kind != "gan":
            raise GanfitError(f"--gan {args.gan}: a {kind} model, not a GAN export")
        _require_latent_gan(gan.get("detail", True), gan.get("pca_base", 0), args.gan)
        resolution = int(gan.get("resolution", 256))
        try:
            config = DetailTrainConfig(
                data=args.data, gan=str(Path(args.gan).resolve()), out=args.out, steps=args.steps, batch=args.batch,
                patch=args.patch, lr=args.lr, r1_gamma=args.r1_gamma, l1_weight=args.l1_weight,
                device=str(device), seed=args.seed,
                checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
                time_limit_minutes=args.time_limit, quiet=args.quiet,
                detail=DetailConfig(resolution=resolution, channels=args.channels, layers=args.layers,
                                    cutoff=max(1, resolution // 4) if args.cutoff is None else args.cutoff))
        except ValueError as exc:
            raise GanfitError(f"train-texture-detail: {exc}") from exc
        train_detail(config, resume=args.resume)
    if args.export:
        checkpoint = latest_checkpoint(args.out)
        if checkpoint is None:
            raise GanfitError(f"{args.out} holds no checkpoint to export: train first")
        export_with_detail(checkpoint, args.export)
        print(f"exported {args.export}")
    elif not train:
        raise GanfitError("train-texture-detail: give --data and --gan to train, or --export NPZ")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from ganfit.cli import main as cli_main

    return cli_main(["train-texture-detail", *(argv or [])])
