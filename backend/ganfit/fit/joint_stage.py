"""Stage 2 of paper 3.4: all parameters at once under the full objective (eqs. 8-13).

Per step, for every photo: the head is rendered in the photo's fitted view over a square window
around the face, laid over the photo and cut to the identity network's chip by the same warp as
the photo (``face.alignment``); a second render with a random pose, expression and light (eq. 8)
gets its own chip from its projected landmarks. The identity network compares both with the
photo (eqs. 8-9) and the photo-view render's activations with the photo's (eq. 10); the pixel
loss (eq. 11) and the landmark loss (eq. 12) keep the fit on the photo, the priors (eq. 13) keep
it a plausible face. Several photos of one person (paper 3.5, eq. 14) share the identity; pose,
expression and light stay per photo.

The texture is either a texture model's decoded latent code, optimised with everything else
(paper eq. 6; ``texture_model``: the GAN or the PCA baseline of ``ganfit.texture``), or, without
a model, fixed: the photos projected into UV after stage 1 (the fit then moves shape,
expression, pose and light, and the final texture is projected again from the fitted geometry).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..face.alignment import ChipWarp, Window, crop_window, extract_chips
from ..face.detection import FACE_OUTLINE
from ..models.shape_model import ShapeModel
from ..objective import FullObjective
from ..params import FitParams, LightParams
from ..render import Camera, MeshRenderer, PointLight
from .losses import identity_loss, pixel_loss
from .optim import Adam, check_finite_loss
from .pose import HeadPose, axis_angle_to_matrix
from .progress import MESH_EVERY, ProgressEvent, ProgressFn, no_progress
from .settings import JointStageSettings

if TYPE_CHECKING:
    from ..face.identity import IdentityNetwork
    from ..texture.model import TextureModel

log = logging.getLogger(__name__)


def face_region(landmarks: np.ndarray, window: Window, size: int, photo_size: tuple[int, int]) -> Tensor:
    """(1, 1, size, size) mask: 1 inside the landmark outline and inside the photo."""
    x0, y0, x1, y1 = window
    scale = size / (x1 - x0)
    outline = (landmarks[FACE_OUTLINE] - [x0, y0]) * scale
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(map(float, p)) for p in outline], fill=255)
    width, height = photo_size
    photo = Image.new("L", (size, size), 0)
    ImageDraw.Draw(photo).rectangle([-x0 * scale, -y0 * scale, (width - x0) * scale - 1, (height - y0) * scale - 1], fill=255)
    both = np.minimum(np.asarray(canvas), np.asarray(photo)).astype(np.float32) / 255.0
    return torch.from_numpy(both)[None, None]


@dataclass
class PhotoTarget:
    """One photo as the objective sees it; everything here is fixed during fitting."""

    photo: Tensor  # (3, H, W) in [0, 1]
    landmarks: Tensor  # (1, 68, 2) detected, photo pixels
    size: tuple[int, int]  # photo (width, height)
    warp: ChipWarp  # the identity network's chip in the photo
    window: Window  # square around the chip and the face outline; renders cover this
    image: Tensor  # (1, 3, R, R) the photo over the window
    region: Tensor  # (1, 1, R, R) face outline within the photo
    embedding: Tensor  # (1, D) identity features of the photo's chip
    features: list[Tensor]  # content activations of the photo's chip
    background: Tensor  # (1, 3, 1, 1) mean colour of the window, behind random-pose renders


@torch.no_grad()
def prepare_target(
    photo: Tensor, landmarks: np.ndarray, identity: IdentityNetwork, render_size: int, with_features: bool = True
) -> PhotoTarget:
    """Cut the photo's window and chip and compute its identity features once (without
    ``with_features`` the identity network is not run: the landmark-only fit needs none)."""
    _, height, width = photo.shape
    warp = ChipWarp(identity.chip_transform(landmarks), identity.chip_size)
    window = warp.window(include=landmarks)
    image = crop_window(photo[None], window, render_size)
    region = face_region(landmarks, window, render_size, (width, height)).to(photo)
    if with_features:
        embedding, features = identity.features(extract_chips(image, [window], [warp]))
    else:
        embedding, features = photo.new_zeros(1, 0), []
    return PhotoTarget(
        photo=photo,
        landmarks=torch.as_tensor(landmarks, dtype=photo.dtype, device=photo.device)[None],
        size=(width, height),
        warp=warp,
        window=window,
        image=image,
        region=region,
        embedding=embedding.detach(),
        features=[f.detach() for f in features],
        background=image.mean(dim=(2, 3), keepdim=True),
    )


@dataclass
class JointFit:
    """Result of the joint stage; tensors detached."""

    pose: HeadPose
    identity: Tensor  # (1, Ki) in units of the prior std, shared by all photos
    expression: Tensor  # (B, Ke)
    light: PointLight  # batch B
    losses: dict[str, list[float]] = field(default_factory=dict)
    texture_latent: Tensor | None = None  # (1, latent_dim) with a texture model


def random_view(camera: Camera, centre: Tensor, yaw: float, pitch: float) -> Camera:
    """The camera orbited about the head centre by yaw (about model y) then pitch (about x)."""
    dtype, device = centre.dtype, centre.device
    rot = axis_angle_to_matrix(torch.tensor([[0.0, yaw, 0.0]], dtype=dtype, device=device))
    rot = rot @ axis_angle_to_matrix(torch.tensor([[pitch, 0.0, 0.0]], dtype=dtype, device=device))

    def turn(points: Tensor) -> Tensor:
        return centre + ((points - centre)[:, None, :] @ rot.transpose(-1, -2))[:, 0]

    up = (camera.up[:, None, :] @ rot.transpose(-1, -2))[:, 0]
    return Camera(position=turn(camera.position), look_at=turn(camera.look_at), up=up, focal=camera.focal)


def _lower_fit(settings: JointStageSettings) -> str:
    """What to do about a runaway full-objective fit: its learning rate or a loss weight."""
    return (f"lower the full-objective learning rate (--fit-lr, the protocol's fit_lr; now {settings.learning_rate:g}, "
            f"default {JointStageSettings.learning_rate:g}) or the loss weights you raised")


def fit_joint(
    model: ShapeModel,
    renderer: MeshRenderer,
    identity_net: IdentityNetwork,
    targets: list[PhotoTarget],
    pose: HeadPose,
    identity: Tensor,
    expression: Tensor,
    light: PointLight,
    texture: Tensor,
    settings: JointStageSettings = JointStageSettings(),
    progress: ProgressFn = no_progress,
    seed: int = 0,
    texture_model: "TextureModel | None" = None,
    texture_latent: Tensor | None = None,
) -> JointFit:
    """Fit pose (B), shared identity (1, Ki, std units), expression (B, Ke) and light (B) to B
    photos of one person under the full objective, starting from the given values. Without
    ``texture_model`` the ``texture`` (1, 3, T, T) is fixed; with it, the texture is
    ``texture_model.decode(latent)`` and the latent (1, latent_dim; shared by all photos, eq. 14)
    is optimised from ``texture_latent`` under the model's prior."""
    batch = len(targets)
    dtype, device = identity.dtype, identity.device
    generator = torch.Generator().manual_seed(seed)
    pose = HeadPose(*(x.detach().clone().requires_grad_(i < 3) for i, x in enumerate(
        (pose.rotation, pose.offset, pose.log_depth, pose.focal))))
    identity = identity.detach().clone().requires_grad_(True)
    expression = expression.detach().clone().requires_grad_(True)
    with torch.no_grad():
        centre = model.vertices(identity.expand(batch, -1) * model.identity_std.to(dtype), expression).mean(1)
    lights = LightParams.from_light(light.detach(), centre)
    for p in lights.parameters():
        p.requires_grad_(True)
    objective = FullObjective(model, renderer, identity_net, settings, texture_model)

    optimiser = Adam([identity, expression] + lights.parameters(), lr=settings.learning_rate)
    pose_optimiser = Adam(pose.parameters(), lr=settings.pose_learning_rate)
    latent = None
    texture_optimiser = None
    if texture_model is not None:
        start = texture_latent if texture_latent is not None else texture_model.initial_latent(1)
        latent = start.detach().clone().to(device=device, dtype=dtype).requires_grad_(True)
        texture_optimiser = Adam([latent], lr=settings.texture_learning_rate)
    s = settings
    names = ("identity", "random_pose", "content", "pixel", "landmark", "prior", "texture_prior", "total")
    history: dict[str, list[float]] = {name: [] for name in names}
    params = FitParams(pose=pose, identity=identity, expression=expression, light=lights, texture_latent=latent)

    optimisers = [o for o in (optimiser, pose_optimiser, texture_optimiser) if o is not None]
    base_rates = [o.lr for o in optimisers]
    for step in range(s.steps):
        # Linear warm-up: Adam's first steps move every parameter by the full rate whatever its
        # gradient, which with a fixed texture slides it against the photo (pixel loss x6 at
        # step 2 without it).
        ramp = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps > 0 else 1.0
        for o, rate in zip(optimisers, base_rates):
            o.lr = rate * ramp
        optimiser.zero_grad(set_to_none=True)
        pose_optimiser.zero_grad(set_to_none=True)
        if latent is not None:
            latent.grad = None
        out = objective(params, targets, texture, generator)
        out.total.backward()
        optimiser.step()
        pose_optimiser.step()
        if texture_optimiser is not None:
            texture_optimiser.step()
        with torch.no_grad():
            expression.clamp_(model.expression_min.to(dtype), model.expression_max.to(dtype))
            identity.clamp_(-3.0, 3.0)
            lights.colour.clamp_(0.0, 4.0)
            lights.ambient.clamp_(0.0, 4.0)
        values = {k: float(v.detach().mean()) for k, v in out.terms.items()}
        values["total"] = float(out.total.detach())
        check_finite_loss("full-objective fit", step, values["total"], _lower_fit(s))
        for k in names:
            history[k].append(values.get(k, 0.0))
        mesh = None
        if (step + 1) % MESH_EVERY == 0 or step + 1 == s.steps:
            mesh = out.vertices[0].detach().cpu().numpy()
        progress(ProgressEvent("fitting", step + 1, s.steps, values, vertices=mesh))

    if s.steps:
        log.info("joint stage: %s", ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()))
    with torch.no_grad():
        final_light = lights.light()
    return JointFit(
        pose=pose.detach(),
        identity=identity.detach(),
        expression=expression.detach(),
        light=final_light.detach(),
        losses=history,
        texture_latent=None if latent is None else latent.detach(),
    )


def refine_texture(
    renderer: MeshRenderer,
    identity_net: IdentityNetwork,
    targets: list[PhotoTarget],
    vertices: Tensor,
    camera: Camera,
    light: PointLight,
    texture: Tensor,
    settings: JointStageSettings,
    progress: ProgressFn = no_progress,
) -> tuple[Tensor, dict[str, list[float]]]:
    """The paper's optional last step: the UV map itself moves (a per-texel residual on the
    texture model's output) under the pixel and identity losses, geometry and light fixed.

    Off by default (``texture_refine_steps`` 0): it escapes the texture prior, so what it adds is
    the photo's detail, not the model's; results record it separately (``refine_*`` losses).
    Returns the refined texture (1, 3, T, T) and the loss curves.
    """
    residual = torch.zeros_like(texture, requires_grad=True)
    optimiser = Adam([residual], lr=settings.texture_refine_learning_rate)
    size = settings.render_size
    history: dict[str, list[float]] = {"pixel": [], "identity": [], "total": []}
    reference = torch.cat([t.embedding for t in targets])
    for step in range(settings.texture_refine_steps):
        optimiser.zero_grad(set_to_none=True)
        refined = (texture + residual).clamp(0.0, 1.0)
        pixels, chips_in = [], []
        for b, target in enumerate(targets):
            sl = slice(b, b + 1)
            cam_b, light_b = camera.view(b), light.view(b)
            out = renderer(vertices[sl], refined, cam_b, light_b, size, size, image_size=target.size, window=target.window)
            pixels.append(pixel_loss(out.image, target.image, target.region * out.mask))
            chips_in.append(out.image * out.mask + target.image * (1 - out.mask))
        chips = extract_chips(chips_in, [t.window for t in targets], [t.warp for t in targets])
        ident = identity_loss(identity_net.embed(chips), reference)
        pixel = torch.cat(pixels)
        total = (settings.pixel_weight * pixel + settings.identity_weight * ident).mean() + 1e-2 * residual.square().mean()
        total.backward()
        optimiser.step()
        values = {"pixel": float(pixel.detach().mean()), "identity": float(ident.detach().mean()), "total": float(total.detach())}
        check_finite_loss("texture refinement", step, values["total"], _lower_fit(settings))
        for key, value in values.items():
            history[key].append(value)
        progress(ProgressEvent("refine", step + 1, settings.texture_refine_steps, values))
    with torch.no_grad():
        return (texture + residual).clamp(0.0, 1.0).detach(), history
