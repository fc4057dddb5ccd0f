"""Train the Fast-GANFit encoder (paper 4) self-supervised: ``ganfit train-regressor``.

Stage 1 (the first ``stage1_steps``): the landmark loss (eq. 12) of the model's 68 landmark
vertices projected with the predicted pose, plus the priors on identity, expression and light;
nothing is rendered. Stage 2 (the next ``stage2_steps``): the full objective, eq. 15, i.e.
``ganfit.objective.FullObjective``'s total on the predicted ``FitParams``.

Data: a folder of face photos (default ``../shared/data/utkface/crop_part1``). A photo is held out
when the SHA-1 of its file name falls in the first ``held_out`` fraction of the hash range: the
split depends on nothing but the name, and held-out photos are never trained on (only a few of
them are shown in the sample sheets). Detection, landmarks, the aligned chip and the identity
network's pooled activations are computed once per photo into ``cache/`` (one ``.npz`` per photo,
written atomically; photos without a face are remembered as such), so an epoch of stage 1 reads
only small arrays. Stage 2 re-reads the photo and cuts its ``PhotoTarget`` from the cached
landmarks (no detection).

Several processes: under ``torchrun --nproc_per_node=K`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
from the environment) the encoder is wrapped in DistributedDataParallel (gloo on CPU, nccl on
CUDA), each process takes ``batch / K`` photos of the global batch through a DistributedSampler,
each builds its share of the cache, and only rank 0 writes checkpoints, sample sheets and logs
progress. Run folder: ``config.json``, ``checkpoints/step-NNNNNNN.pt``, ``samples/step-NNNNNNN.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import GanfitError
from ..fit.landmark_stage import interocular
from ..fit.losses import coefficient_prior, landmark_loss
from ..fit.settings import JointStageSettings, LandmarkStageSettings
from ..io.atomic import atomic_file, atomic_savez
from ..params import FitParams
from ..texture.dataset import held_out, processing_order  # numpy only: the project's split and order
from ..regress.encoder import EncoderConfig, EncoderInputs, RegressionEncoder

__all__ = ["RegressorTrainConfig", "TrainResult", "build_cache", "is_held_out", "load_checkpoint", "train", "register"]

log = logging.getLogger(__name__)

DEFAULT_DATA = "../shared/data/utkface/crop_part1"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
CACHE_VERSION = 1


@dataclass(frozen=True)
class RegressorTrainConfig:
    """Everything a run needs; written to ``config.json`` in the run folder."""

    out: str
    data: str = DEFAULT_DATA
    cache: str | None = None  # default: <out>/cache
    limit: int = 0  # use only N photos of the folder (the first in a fixed hash order: a uniform sample); 0 = all
    held_out: float = 0.05  # fraction of photos (by file-name hash) never trained on
    stage1_steps: int = 2000
    stage2_steps: int = 0
    batch: int = 32  # global batch, split over processes
    stage2_batch: int = 4  # global batch of stage 2 (each photo is rendered twice)
    learning_rate: float = 1e-3
    stage2_learning_rate: float = 1e-4
    # Each training photo is placed at a random spot of a virtual photo up to this many times
    # larger (``reframe``), so the encoder learns the perspective of faces that fill a small part
    # of the frame, as in most photos, not only of UTKFace's tight crops. 1 switches it off.
    reframe: float = 6.0
    excess_weight: float = 1.0  # pulls raw outputs past the parameters' ranges back
    checkpoint_every: int = 500
    sample_every: int = 500
    sample_photos: int = 4
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "cpu"
    texture_model: str | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    objective: JointStageSettings = field(default_factory=JointStageSettings)
    progress: bool = True

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict[str, Any]) -> "RegressorTrainConfig":
        known = {f.name for f in fields(RegressorTrainConfig)}
        values = {k: v for k, v in values.items() if k in known}
        if isinstance(values.get("encoder"), dict):
            values["encoder"] = EncoderConfig.from_dict(values["encoder"])
        if isinstance(values.get("objective"), dict):
            values["objective"] = JointStageSettings(**values["objective"])
        return RegressorTrainConfig(**values)


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # rank 0's loss of each step run in this call
    checkpoint: Path | None


# ---------------------------------------------------------------------------------------------
# Data


def is_held_out(name: str, fraction: float) -> bool:
    """The project's one held-out rule (``texture.dataset.held_out``): a hash of the file name
    below ``fraction``, and always the 20 UTKFace photos of the identity benchmark. So the
    photos held out from the texture GAN and from the regressor are the same, and the Table I
    photos are unseen by both."""
    return held_out(name, fraction)


def list_photos(folder: Path, limit: int = 0) -> list[Path]:
    if not folder.is_dir():
        raise GanfitError(f"{folder}: no such folder of photos; pass --data FOLDER (JPEG/PNG face photos)")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if limit > 0:  # a uniform sample: in name order UTKFace's first photos are all small children
        photos = sorted(sorted(photos, key=lambda p: processing_order(p.name))[:limit])
    if not photos:
        raise GanfitError(f"{folder}: no JPEG/PNG photos in it; pass --data with a folder of face photos")
    return photos


def _cache_file(cache: Path, photo: Path) -> Path:
    stat = photo.stat()
    key = hashlib.sha1(f"{CACHE_VERSION}|{photo.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache / f"{photo.stem[:60]}-{key}.npz"


def _photo_tensor(photo: Any) -> Tensor:
    return torch.from_numpy(np.array(photo.pixels)).permute(2, 0, 1).float() / 255


def cache_photo(photo_path: Path, cache: Path, identity_net: Any, detector: Any) -> Path:
    """Detect, place landmarks, cut the chip and run the identity network once; write the arrays."""
    from ..errors import NoFaceError
    from ..face.detection import find_face
    from ..fit.reconstruct import photo_focal
    from ..io.images import load_photo
    from ..regress.encoder import encoder_inputs

    target = _cache_file(cache, photo_path)
    if target.exists():
        return target
    try:
        photo = load_photo(photo_path)
        face = find_face(photo, detector=detector)
    except (NoFaceError, GanfitError) as exc:
        log.info("%s: skipped (%s)", photo_path.name, str(exc).splitlines()[0])
        atomic_savez(target, {"ok": np.array(0)})
        return target
    focal = photo_focal(photo, LandmarkStageSettings().default_focal)
    inputs = encoder_inputs(_photo_tensor(photo), face.landmarks, focal, identity_net)
    atomic_savez(target, {
        "ok": np.array(1),
        "chip": (inputs.chip[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
        "identity": inputs.identity[0].numpy().astype(np.float32),
        "landmarks": inputs.landmarks[0].numpy().astype(np.float32),
        "image_size": inputs.image_size[0].numpy().astype(np.float32),
        "focal": inputs.focal.numpy().astype(np.float32),
    })
    return target


def build_cache(photos: list[Path], cache: Path, rank: int = 0, world: int = 1, progress: bool = False) -> None:
    """Cache every photo (this process: every ``world``-th from ``rank``)."""
    from ..face.detection import default_detector
    from ..face.dlib_identity import DlibIdentity

    todo = [p for i, p in enumerate(photos) if i % world == rank and not _cache_file(cache, p).exists()]
    if not todo:
        return
    from tqdm import tqdm

    identity_net, detector = DlibIdentity(), default_detector()
    for photo in tqdm(todo, desc="regressor cache", unit="photo", disable=not progress):
        cache_photo(photo, cache, identity_net, detector)


@dataclass
class CachedPhotos:
    """The cached photos that have a face, as tensors (chips stay uint8 until a batch is cut)."""

    paths: list[Path]
    chip: Tensor  # (N, 3, 150, 150) uint8
    identity: Tensor
    landmarks: Tensor
    image_size: Tensor
    focal: Tensor

    def __len__(self) -> int:
        return len(self.paths)

    def inputs(self, rows: list[int], device: torch.device) -> EncoderInputs:
        index = torch.as_tensor(rows, dtype=torch.long)
        return EncoderInputs(chip=self.chip[index].float() / 255, identity=self.identity[index],
                             landmarks=self.landmarks[index], image_size=self.image_size[index],
                             focal=self.focal[index]).to(device)


def load_cache(photos: list[Path], cache: Path) -> CachedPhotos:
    kept: list[Path] = []
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("chip", "identity", "landmarks", "image_size", "focal")}
    for photo in photos:
        file = _cache_file(cache, photo)
        if not file.exists():
            raise GanfitError(f"{file}: missing from the cache; run again to build it")
        with np.load(file, allow_pickle=False) as data:
            if not int(data["ok"]):
                continue
            kept.append(photo)
            for key in arrays:
                arrays[key].append(data[key])
    if not kept:
        return CachedPhotos([], torch.zeros(0, 3, 150, 150, dtype=torch.uint8), torch.zeros(0, 0), torch.zeros(0, 68, 2),
                            torch.zeros(0, 2), torch.zeros(0))
    stacked = {k: torch.from_numpy(np.stack(v)) for k, v in arrays.items()}
    stacked["focal"] = stacked["focal"].reshape(-1)
    return CachedPhotos(kept, **stacked)


def split_photos(photos: list[Path], held_out: float) -> tuple[list[Path], list[Path]]:
    train = [p for p in photos if not is_held_out(p.name, held_out)]
    held = [p for p in photos if is_held_out(p.name, held_out)]
    return train, held


# ---------------------------------------------------------------------------------------------
# Losses


def stage1_loss(encoder: RegressionEncoder | Any, params: FitParams, inputs: EncoderInputs, excess: Tensor,
                model: Any, settings: JointStageSettings, excess_weight: float) -> Tensor:
    """(B,) landmark loss (eq. 12) and priors: no rendering, only the 68 landmark vertices."""
    identity = params.identity * model.identity_std.to(params.identity)
    marks = model.vertices(identity, params.expression, indices=model.landmark_indices)
    width, height = inputs.image_size[:, 0], inputs.image_size[:, 1]
    camera = params.camera()
    projected = torch.cat([camera.view(b).project(marks[b:b + 1], width[b], height[b])[..., :2]
                           for b in range(params.batch)])
    land = landmark_loss(projected, inputs.landmarks, interocular(inputs.landmarks))
    light = params.light
    prior = (settings.identity_prior_weight * coefficient_prior(params.identity)
             + settings.expression_prior_weight * coefficient_prior(params.expression, model.expression_std.to(identity))
             + settings.light_prior_weight * ((light.colour + light.ambient).mean(-1) - 1.0) ** 2)
    return settings.landmark_weight * land + prior + excess_weight * excess


def landmark_error(params: FitParams, inputs: EncoderInputs, model: Any) -> Tensor:
    """(B,) mean landmark distance / outer-eye-corner distance of the projected landmark vertices."""
    identity = params.identity * model.identity_std.to(params.identity)
    marks = model.vertices(identity, params.expression, indices=model.landmark_indices)
    camera = params.camera()
    rows = []
    for b in range(params.batch):
        w, h = inputs.image_size[b]
        rows.append(camera.view(b).project(marks[b:b + 1], w, h)[..., :2])
    projected = torch.cat(rows)
    return (projected - inputs.landmarks).norm(dim=-1).mean(-1) / interocular(inputs.landmarks)


@dataclass(frozen=True)
class Reframing:
    """Each photo of a batch pasted into a larger virtual photo (B rows): its size and where the
    photo's top-left corner lands. The chip and the identity features do not change (they are
    cut along the landmarks); the landmarks move and the focal length, a fraction of the width,
    grows with the frame, so the head appears farther away and off-centre."""

    size: Tensor  # (B, 2) long: virtual width, height
    corner: Tensor  # (B, 2) long: x, y of the photo in it

    def apply(self, inputs: EncoderInputs) -> EncoderInputs:
        return replace(inputs, landmarks=inputs.landmarks + self.corner[:, None].to(inputs.landmarks),
                       image_size=self.size.to(inputs.image_size))


def reframe(inputs: EncoderInputs, largest: float, generator: torch.Generator) -> Reframing:
    """A random ``Reframing``: each virtual photo 1 to ``largest`` times the photo's size
    (log-uniform), the photo at a uniform place in it."""
    batch = inputs.image_size.shape[0]
    size = inputs.image_size.cpu().round().long()
    if largest <= 1.0:
        return Reframing(size, torch.zeros_like(size))
    scale = torch.exp(torch.rand(batch, generator=generator) * math.log(largest))
    frame = torch.maximum((size * scale[:, None]).ceil().long(), size)
    corner = (torch.rand(batch, 2, generator=generator) * (frame - size + 1)).floor().long()
    return Reframing(frame, corner)


def photo_target(path: Path, landmarks: Tensor, settings: JointStageSettings, identity_net: Any,
                 frame: tuple[Tensor, Tensor] | None = None) -> Any:
    """The objective's target for one training photo; with ``frame`` (virtual size, corner: one
    row of a ``Reframing``), the photo pasted into a black virtual photo, and ``landmarks`` are
    in that photo's pixels."""
    from ..fit.joint_stage import prepare_target
    from ..io.images import load_photo

    photo = _photo_tensor(load_photo(path))
    if frame is not None:
        (width, height), (x, y) = (int(v) for v in frame[0]), (int(v) for v in frame[1])
        canvas = photo.new_zeros(3, height, width)
        canvas[:, y:y + photo.shape[1], x:x + photo.shape[2]] = photo
        photo = canvas
    return prepare_target(photo, landmarks.cpu().numpy(), identity_net, settings.render_size)


#: Stage 2's texture size: the objective renders 224 px windows, so 256 texels across the UV map
#: hold what the renders can show, at a quarter of 512's projection time.
STAGE2_TEXTURE_SIZE = 256


class PhotoTextures:
    """Each photo projected into UV with the predicted light divided out: the texture GANFit's
    fit renders without a texture model (``fit.reconstruct``), so stage 2 trains the encoder
    under the image formation that fast mode and GANFit++ then use. The projection is not
    differentiated (as in the fit, where the texture is fixed): in the photo's own view it
    reproduces the photo where the head covers it, and the random-pose render (eq. 8) and the
    landmarks judge the shape."""

    def __init__(self, model: Any, size: int = STAGE2_TEXTURE_SIZE) -> None:
        from ..fit.texture_projection import mirror_vertex_index, uv_texels

        self.model = model
        self.size = size
        self.mirror = mirror_vertex_index(model.mean.float())
        self.texels = uv_texels(model.uvs, model.uv_faces, model.faces, model.mean.shape[0], size)

    @torch.no_grad()
    def __call__(self, params: FitParams, targets: list[Any]) -> Tensor:
        """(B, 3, S, S), row b photo b's texture under its predicted parameters."""
        from ..fit.texture_projection import project_photo_to_uv

        rows = []
        model = self.model
        for b, target in enumerate(targets):
            row = params.row(b).detach()
            vertices = model.vertices(row.identity * model.identity_std.to(row.identity), row.expression)[0]
            texture = project_photo_to_uv(target.photo, vertices, model.faces, model.uvs, model.uv_faces,
                                          row.camera(), self.mirror.to(vertices.device), self.size,
                                          row.point_light(), texels=self.texels)
            rows.append(texture.image[None])
        return torch.cat(rows)


def stage2_loss(objective: Any, params: FitParams, targets: list[Any], textures: Tensor,
                generator: torch.Generator) -> Tensor:
    """Eq. 15: the full objective's total over the batch, each photo with its own texture."""
    return objective(params, targets, textures.to(params.expression), generator).total


# ---------------------------------------------------------------------------------------------
# Distributed set-up, checkpoints, sample sheets


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device


def _setup_distributed(device: str) -> tuple[_Dist, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "RANK" in os.environ and "LOCAL_RANK" in os.environ
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GanfitError("--device cuda: no CUDA device here; use --device cpu")
    if world <= 1 and not launched:
        return _Dist(0, 1, dev), False
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        created = True
    return _Dist(rank, world, dev), created


def _checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    return sorted(folder.glob("step-*.pt")) if folder.is_dir() else []


def save_checkpoint(out: Path, step: int, encoder: RegressionEncoder, optimiser: torch.optim.Optimizer,
                    config: RegressorTrainConfig) -> Path:
    target = out / "checkpoints" / f"step-{step:07d}.pt"
    state = {"step": step, "encoder": encoder.state_dict(), "optimiser": optimiser.state_dict(),
             "encoder_config": encoder.config.to_dict(), "config": json.dumps(config.to_dict())}
    with atomic_file(target, force=True) as tmp:
        torch.save(state, tmp)
    for old in _checkpoints(out)[:-max(1, config.keep_checkpoints)]:
        old.unlink(missing_ok=True)
    return target


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise GanfitError(f"{path}: not a readable regressor checkpoint ({exc}); pass another or start afresh") from exc


def write_sample_sheet(target: Path, encoder: RegressionEncoder, model: Any, renderer: Any, identity_net: Any,
                       data: CachedPhotos, rows: list[int], settings: JointStageSettings, device: torch.device,
                       seed: int, textures: PhotoTextures) -> None:
    """One row per photo: the photo's window | the prediction rendered over it | a random-pose render."""
    from PIL import Image

    from ..objective.full import random_render

    tiles = []
    generator = torch.Generator().manual_seed(seed)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        for row in rows:
            inputs = data.inputs([row], device)
            params = encoder(inputs).params
            photo = photo_target(data.paths[row], inputs.landmarks[0], settings, identity_net)
            photo = _target_to(photo, device)
            texture = textures(params, [photo])
            identity = params.identity * model.identity_std.to(params.identity)
            vertices = model.vertices(identity, params.expression)
            camera, light = params.camera(), params.point_light()
            size = settings.render_size
            out = renderer(vertices, texture, camera, light, size, size, image_size=photo.size, window=photo.window)
            render = out.image * out.mask + photo.image * (1 - out.mask)
            turned = random_render(model, renderer, identity_net, photo, identity, params.expression, camera, light,
                                   texture, params.light.centre, settings, generator, [], [])
            turned = torch.nn.functional.interpolate(turned, size=(size, size), mode="bilinear", align_corners=False)
            tiles.append(torch.cat([photo.image, render, turned], 3)[0])
    encoder.train(was_training)
    sheet = torch.cat(tiles, 1).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    with atomic_file(target, force=True) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")


def _target_to(target: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return target
    moved = {f.name: getattr(target, f.name).to(device) for f in fields(target) if isinstance(getattr(target, f.name), Tensor)}
    moved["features"] = [f.to(device) for f in target.features]
    return replace(target, **moved)


# ---------------------------------------------------------------------------------------------
# The loop


def _check(config: RegressorTrainConfig) -> None:
    if config.stage1_steps < 0 or config.stage2_steps < 0 or config.total_steps == 0:
        raise GanfitError("steps: give --stage1-steps and/or --stage2-steps, at least one above 0")
    if config.batch < 1 or config.stage2_batch < 1:
        raise GanfitError("--batch and --stage2-batch must be at least 1")
    if not 0.0 <= config.held_out < 1.0:
        raise GanfitError(f"--held-out {config.held_out}: give a fraction from 0 up to (not including) 1")
    if not 1.0 <= config.reframe <= 100.0:
        raise GanfitError(f"--reframe {config.reframe}: give a factor from 1 (off) to 100")
    if config.checkpoint_every < 1 or config.sample_every < 0:
        raise GanfitError("--checkpoint-every must be at least 1 and --sample-every at least 0 (0: no sheets)")


def train(config: RegressorTrainConfig, resume: bool = False) -> TrainResult:
    """Run (or, with ``resume``, continue) training up to ``config.total_steps``."""
    from ..face.dlib_identity import DlibIdentity
    from ..models.shape_model import load_default_shape_model
    from ..objective import FullObjective
    from ..render import MeshRenderer

    from ..threads import apply_threads

    _check(config)
    apply_threads()  # torch's default thread count collapses on a busy CPU (ganfit.threads)
    ctx, created = _setup_distributed(config.device)
    out = Path(config.out)
    cache = Path(config.cache) if config.cache else out / "cache"
    try:
        photos = list_photos(Path(config.data), config.limit)
        train_paths, held_paths = split_photos(photos, config.held_out)
        shown = held_paths[:config.sample_photos]
        build_cache(train_paths + shown, cache, ctx.rank, ctx.world, progress=config.progress and ctx.rank == 0)
        if ctx.world > 1:
            dist.barrier()
        data = load_cache(train_paths, cache)
        samples = load_cache(shown, cache) if shown else load_cache([], cache)
        if len(data) < ctx.world:
            raise GanfitError(f"{config.data}: only {len(data)} training photos with a face; "
                              f"{ctx.world} processes need at least one each")
        if len(samples) == 0:
            samples = data
        log.info("regressor: %d training photos with a face (%d held out, never trained on), %d process(es)",
                 len(data), len(held_paths), ctx.world)

        torch.manual_seed(config.seed)
        model = load_default_shape_model().to(ctx.device)
        texture_model = None
        encoder_config = config.encoder
        if config.texture_model:
            from ..texture.model import load_texture_model

            texture_model = load_texture_model(config.texture_model, device=ctx.device)
            encoder_config = replace(encoder_config, texture_latent_dim=int(texture_model.latent_dim))
        encoder = RegressionEncoder(model, encoder_config).to(ctx.device)
        optimiser = torch.optim.Adam(encoder.parameters(), lr=config.learning_rate)
        step = 0
        if resume:
            found = _checkpoints(out)
            if not found:
                raise GanfitError(f"{out}: no checkpoint to resume from; run without --resume to start")
            state = load_checkpoint(found[-1], ctx.device)
            encoder.load_state_dict(state["encoder"])
            optimiser.load_state_dict(state["optimiser"])
            step = int(state["step"])
            log.info("resumed from %s (step %d)", found[-1], step)
        if ctx.rank == 0:
            with atomic_file(out / "config.json", force=True) as tmp:
                tmp.write_text(json.dumps(config.to_dict(), indent=2))
        net: Any = encoder
        if ctx.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                encoder, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

        identity_net = DlibIdentity(device=ctx.device)
        renderer = MeshRenderer(model.faces, model.uvs, model.uv_faces).to(ctx.device)
        objective = FullObjective(model, renderer, identity_net, config.objective, texture_model)
        return _loop(config, ctx, net, encoder, optimiser, step, data, samples, model, renderer, identity_net,
                     objective, out)
    finally:
        if created:
            dist.destroy_process_group()


def _loop(config: RegressorTrainConfig, ctx: _Dist, net: Any, encoder: RegressionEncoder, optimiser: Any, step: int,
          data: CachedPhotos, samples: CachedPhotos, model: Any, renderer: Any, identity_net: Any, objective: Any,
          out: Path) -> TrainResult:
    from torch.utils.data import DistributedSampler
    from tqdm import tqdm

    losses: list[float] = []
    checkpoint: Path | None = None
    bar = tqdm(total=config.total_steps, initial=step, desc="train-regressor", unit="step",
               disable=not (config.progress and ctx.rank == 0))
    sampler = DistributedSampler(range(len(data)), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=config.seed, drop_last=False)
    sample_rows = list(range(min(config.sample_photos, len(samples))))
    textures = PhotoTextures(model)
    while step < config.total_steps:
        stage = 1 if step < config.stage1_steps else 2
        global_batch = config.batch if stage == 1 else config.stage2_batch
        per_rank = max(1, global_batch // ctx.world)
        lr = config.learning_rate if stage == 1 else config.stage2_learning_rate
        for group in optimiser.param_groups:
            group["lr"] = lr
        # Batch k of the run: epoch and place in it from the step alone, so a resumed run continues
        # where the interrupted one was.
        per_epoch = max(1, math.ceil(len(sampler) / per_rank))
        epoch, place = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        rows = order[place * per_rank:(place + 1) * per_rank] or order[:per_rank]
        inputs = data.inputs(rows, ctx.device)
        framing = reframe(inputs, config.reframe, torch.Generator().manual_seed(config.seed * 7_919 + step * 31 + ctx.rank))
        inputs = framing.apply(inputs)
        prediction = net(inputs)
        if stage == 1:
            loss = stage1_loss(encoder, prediction.params, inputs, prediction.range_excess, model, config.objective,
                               config.excess_weight).mean()
        else:
            targets = [_target_to(photo_target(data.paths[r], inputs.landmarks[i], config.objective, identity_net,
                                               (framing.size[i], framing.corner[i])),
                                  ctx.device) for i, r in enumerate(rows)]
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 97 + ctx.rank)
            loss = stage2_loss(objective, prediction.params, targets, textures(prediction.params, targets), generator)
            loss = loss + config.excess_weight * prediction.range_excess.mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise GanfitError(f"train-regressor: the loss became {value} at step {step} (stage {stage}); "
                              "lower --lr / --stage2-lr and resume from the last checkpoint")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        losses.append(value)
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{value:.4f}")
        if ctx.rank == 0 and config.sample_every and (step % config.sample_every == 0 or step == config.total_steps):
            write_sample_sheet(out / "samples" / f"step-{step:07d}.png", encoder, model, renderer, identity_net,
                               samples, sample_rows, config.objective, ctx.device, config.seed, textures)
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            if ctx.rank == 0:
                checkpoint = save_checkpoint(out, step, encoder, optimiser, config)
                log.info("step %d (stage %d): loss %.5f, checkpoint %s", step, stage, value, checkpoint.name)
            if ctx.world > 1:
                dist.barrier()
    bar.close()
    return TrainResult(step=step, losses=losses, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: Any, name: str = "train-regressor") -> argparse.ArgumentParser:
    """Add ``train-regressor`` to a CLI's subparsers; the parser's ``func`` is ``run``."""
    parser = subparsers.add_parser(name, help="train the Fast-GANFit regression network (docs/regressor.md)",
                                   description=__doc__.splitlines()[0])
    add = parser.add_argument
    defaults = RegressorTrainConfig(out="")
    add("--out", required=True, help="run folder: config.json, checkpoints/, samples/, cache/")
    add("--data", default=DEFAULT_DATA, help=f"folder of face photos (default {DEFAULT_DATA})")
    add("--cache", default=None, help="feature cache folder (default OUT/cache)")
    add("--limit", type=int, default=0, help="use only N photos, a uniform sample (the first in a fixed hash order); 0 = all")
    add("--held-out", type=float, default=defaults.held_out, help="fraction held out by file-name hash")
    add("--stage1-steps", type=int, default=defaults.stage1_steps, help="landmark-loss steps (paper 4, stage 1)")
    add("--stage2-steps", type=int, default=defaults.stage2_steps, help="full-objective steps (eq. 15)")
    add("--batch", type=int, default=defaults.batch, help="global stage-1 batch, split over processes")
    add("--stage2-batch", type=int, default=defaults.stage2_batch, help="global stage-2 batch")
    add("--lr", type=float, default=defaults.learning_rate, help="stage-1 Adam learning rate")
    add("--stage2-lr", type=float, default=defaults.stage2_learning_rate, help="stage-2 Adam learning rate")
    add("--loss-weight", action="append", default=[], metavar="TERM=W",
        help="weight of one term of the objective both stages use (as reconstruct's --loss-weight)")
    add("--reframe", type=float, default=defaults.reframe,
        help="paste each photo into a virtual photo up to this many times larger, so that faces far from the "
             "camera are learnt too (1: off)")
    add("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    add("--sample-every", type=int, default=defaults.sample_every, help="sample sheet every N steps (0: none)")
    add("--seed", type=int, default=0)
    add("--device", default="cpu", help="cpu (default) or cuda; under torchrun each process takes cuda:LOCAL_RANK")
    add("--texture-model", default=None, help="texture model file: the encoder also predicts its latent")
    add("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--export", default=None, metavar="NPZ",
        help="instead of training: write --out's latest checkpoint as regressor weights NPZ and their provenance "
             "NPZ with .json (what --regressor and the shipped weights read)")
    add("--figures", default=None, metavar="JSON",
        help="with --export: a JSON file of measured figures to record in the provenance")
    add("-v", "--verbose", action="store_true")
    parser.set_defaults(func=run)
    return parser


def export_run(out: Path, target: Path, figures: dict[str, Any] | None = None) -> Path:
    """A run's latest checkpoint as shipped-format weights (``regress.weights``) with provenance:
    data and licence, configuration, steps, hardware and wall-clock time, and ``figures``."""
    import platform

    from ..models.shape_model import load_default_shape_model
    from ..regress.weights import LICENCE, save_regressor

    found = _checkpoints(out)
    if not found:
        raise GanfitError(f"{out}: no checkpoint to export; train first (ganfit train-regressor --out {out})")
    state = load_checkpoint(found[-1])
    config = json.loads(state["config"])
    model = load_default_shape_model()
    encoder = RegressionEncoder(model, EncoderConfig.from_dict(state["encoder_config"]))
    encoder.load_state_dict(state["encoder"])
    started = (out / "config.json").stat().st_mtime if (out / "config.json").is_file() else None
    step = int(state["step"])
    provenance = {
        "model": "Fast-GANFit regression encoder (paper 4, Fig. 3), ganfit.regress.RegressionEncoder",
        "parameters": encoder.num_parameters(),
        "data": {"folder": config.get("data"), "licence": LICENCE,
                 "split": f"photos whose name hash is below held_out={config.get('held_out')} and the identity "
                          "benchmark's 20 photos are held out (ganfit.texture.dataset.held_out), never trained on",
                 "limit": config.get("limit") or "all"},
        "licence_note": f"Weights trained on this data inherit its terms: {LICENCE}",
        "steps": {"total": step, "stage1": min(step, int(config.get("stage1_steps", 0))),
                  "stage2": max(0, step - int(config.get("stage1_steps", 0)))},
        "training_config": config,
        "encoder_config": state["encoder_config"],
        "hardware": {"device": config.get("device"), "cpu": platform.processor() or platform.machine(),
                     "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "wall_clock_hours": None if started is None else round((found[-1].stat().st_mtime - started) / 3600, 2),
        "wall_clock_note": "from the run's config.json to its last checkpoint, feature cache included",
        "checkpoint": found[-1].name,
        "shape_model": model.name,
    }
    if figures:
        provenance["figures"] = figures
    save_regressor(encoder, model, target, provenance)
    return target


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.export:
        figures = None
        if args.figures:
            try:
                figures = json.loads(Path(args.figures).read_text())
            except (OSError, ValueError) as exc:
                raise GanfitError(f"--figures {args.figures}: not a readable JSON file ({exc})") from None
        target = export_run(Path(args.out), Path(args.export), figures)
        print(f"wrote {target} and {target.with_suffix('.json').name}")
        return 0
    from ..settings import LOSS_TERMS, build_settings, parse_loss_weights

    objective = JointStageSettings()
    if args.loss_weight:  # the reconstruct command's rules and names for the terms
        fitted = build_settings({"mode": "ganfit", "loss_weights": parse_loss_weights(args.loss_weight)}, "cli").joint
        objective = replace(objective, **{f: getattr(fitted, f) for f in LOSS_TERMS.values()})
    config = RegressorTrainConfig(
        objective=objective,
        out=args.out, data=args.data, cache=args.cache, limit=args.limit, held_out=args.held_out,
        stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, batch=args.batch,
        stage2_batch=args.stage2_batch, learning_rate=args.lr, stage2_learning_rate=args.stage2_lr, reframe=args.reframe,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, seed=args.seed, device=args.device,
        texture_model=args.texture_model, progress=not args.no_progress,
    )
    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("train-regressor: finished at step %d; last checkpoint %s", result.step, result.checkpoint)
    return 0
