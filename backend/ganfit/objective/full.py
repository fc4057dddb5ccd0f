"""Eq. 13: identity (9), content (10), pixel (11) and landmark (12) losses on the render in the
photo's view (eq. 7), identity on a render with random pose, expression and light (eq. 8), and
the priors on shape, expression, light and texture latent.

Batch-first: ``FitParams`` row b and ``targets[b]`` are one photo. Photos of one person share
one identity row (eq. 14); B identity rows fit B different people at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..face.alignment import ChipWarp, Window, extract_chips
from ..fit.landmark_stage import interocular
from ..fit.losses import coefficient_prior, content_loss, identity_loss, landmark_loss, pixel_loss
from ..fit.pose import axis_angle_to_matrix
from ..fit.settings import JointStageSettings
from ..models.shape_model import ShapeModel
from ..params import FitParams
from ..render import Camera, MeshRenderer, PointLight

if TYPE_CHECKING:
    from ..face.identity import IdentityNetwork
    from ..fit.joint_stage import PhotoTarget
    from ..texture.model import TextureModel

__all__ = ["FullObjective", "ObjectiveOutput", "random_render"]

#: The terms of eq. 13, in the order the fit reports them.
TERMS = ("identity", "random_pose", "content", "pixel", "landmark", "prior", "texture_prior")


@dataclass(frozen=True)
class ObjectiveOutput:
    """One evaluation: each term per photo, their weighted sum, and the heads it rendered."""

    terms: dict[str, Tensor]  # name -> (B,); terms switched off (weight 0) are absent
    total: Tensor  # () eq. 13: the weighted sum of the terms' batch means
    vertices: Tensor  # (B, V, 3) the heads in model space
    texture: Tensor  # (1 or B, 3, T, T) the texture rendered


class FullObjective:
    """The full objective for fixed models and settings; call it with parameters and targets."""

    def __init__(self, model: ShapeModel, renderer: MeshRenderer, identity_net: IdentityNetwork,
                 settings: JointStageSettings = JointStageSettings(),
                 texture_model: TextureModel | None = None) -> None:
        self.model = model
        self.renderer = renderer
        self.identity_net = identity_net
        self.settings = settings
        self.texture_model = texture_model

    def weights(self) -> dict[str, float]:
        s = self.settings
        return {"identity": s.identity_weight, "random_pose": s.random_pose_weight, "content": s.content_weight,
                "pixel": s.pixel_weight, "landmark": s.landmark_weight, "prior": 1.0,
                "texture_prior": s.texture_prior_weight}

    def __call__(self, params: FitParams, targets: list[PhotoTarget], texture: Tensor,
                 generator: torch.Generator) -> ObjectiveOutput:
        """Score ``params`` against ``targets``. ``texture`` (1 or B, 3, T, T; one row shared by
        all photos or one per photo) is used as it is unless
        the objective has a texture model and ``params.texture_latent`` is set; then the
        texture is the model's decode (eq. 6). ``generator`` draws the random views of eq. 8."""
        model, s = self.model, self.settings
        identity, expression = params.identity, params.expression
        batch = len(targets)
        dtype, device = expression.dtype, expression.device
        size = s.render_size
        if self.texture_model is not None and params.texture_latent is not None:
            texture = self.texture_model.decode(params.texture_latent)
        id_std = model.identity_std.to(dtype)
        exp_std = model.expression_std.to(dtype)
        index = model.landmark_indices
        target_landmarks = torch.cat([t.landmarks for t in targets])
        iod = interocular(target_landmarks)
        centre = params.light.centre

        shared = identity.expand(batch, -1) * id_std
        vertices = model.vertices(shared, expression)
        camera = params.camera()
        all_lights = params.point_light()

        windows: list[Window] = []
        warps: list[ChipWarp] = []
        chip_inputs: list[Tensor] = []
        photo_rows: list[int] = []
        random_rows: list[int] = []
        pixel_terms: list[Tensor] = []
        projected: list[Tensor] = []
        for b, target in enumerate(targets):
            sl = slice(b, b + 1)
            cam_b, light_b = camera.view(b), all_lights.view(b)
            texture_b = texture if texture.shape[0] == 1 else texture[sl]
            marks = model.vertices(shared[sl], expression[sl], indices=index)
            projected.append(cam_b.project(marks, target.size[0], target.size[1])[..., :2])
            if s.identity_weight or s.content_weight or s.pixel_weight:  # eq. 7, the photo's view
                out = self.renderer(vertices[sl], texture_b, cam_b, light_b, size, size, image_size=target.size,
                                    window=target.window)
                pixel_terms.append(pixel_loss(out.image, target.image, target.region * out.mask))
                if s.identity_weight or s.content_weight:
                    photo_rows.append(len(chip_inputs))
                    chip_inputs.append(out.image * out.mask + target.image * (1 - out.mask))
                    windows.append(target.window)
                    warps.append(target.warp)
            if s.random_pose_weight:  # eq. 8
                random_rows.append(len(chip_inputs))
                chip_inputs.append(random_render(
                    model, self.renderer, self.identity_net, target, shared[sl], expression[sl], cam_b.detach(),
                    light_b, texture_b, centre[sl], s, generator, windows, warps,
                ))

        terms: dict[str, Tensor] = {}
        zero = torch.zeros(batch, dtype=dtype, device=device)
        if pixel_terms:
            terms["pixel"] = torch.cat(pixel_terms)  # eq. 11
        if chip_inputs:
            chips = extract_chips(chip_inputs, windows, warps)
            if s.content_weight:
                embeddings, features = self.identity_net.features(chips)
            else:
                embeddings, features = self.identity_net.embed(chips), []
            reference = torch.cat([t.embedding for t in targets])
            if photo_rows:
                terms["identity"] = identity_loss(embeddings[photo_rows], reference)  # eq. 9
                if features:  # eq. 10
                    refs = [torch.cat([t.features[i] for t in targets]) for i in range(len(features))]
                    terms["content"] = content_loss([f[photo_rows] for f in features], refs)
            if random_rows:
                terms["random_pose"] = identity_loss(embeddings[random_rows], reference)
        terms["landmark"] = landmark_loss(torch.cat(projected), target_landmarks, iod)  # eq. 12
        identity_prior = coefficient_prior(identity)  # eq. 13's priors
        identity_prior = identity_prior[0] if identity_prior.shape[0] == 1 else identity_prior
        prior = s.identity_prior_weight * identity_prior + s.expression_prior_weight * coefficient_prior(expression, exp_std)
        light = params.light
        prior = prior + s.light_prior_weight * ((light.colour + light.ambient).mean(-1) - 1.0) ** 2
        terms["prior"] = prior
        if self.texture_model is not None and params.texture_latent is not None:
            terms["texture_prior"] = self.texture_model.prior(params.texture_latent).expand(batch)
        weights = self.weights()
        total = sum((weights[k] * terms.get(k, zero)).mean() for k in weights)
        assert isinstance(total, Tensor)
        return ObjectiveOutput(terms=terms, total=total, vertices=vertices, texture=texture)


def random_render(
    model: ShapeModel,
    renderer: MeshRenderer,
    identity_net: IdentityNetwork,
    target: PhotoTarget,
    identity: Tensor,
    expression: Tensor,
    camera: Camera,
    light: PointLight,
    texture: Tensor,
    centre: Tensor,
    s: JointStageSettings,
    generator: torch.Generator,
    windows: list[Window],
    warps: list[ChipWarp],
) -> Tensor:
    """Eq. 8: the head with a random pose, expression and light, over a plain background, in a
    window around its own chip (appended to ``windows``/``warps``). Returns (1, 3, R, R)."""
    from ..fit.joint_stage import random_view

    dtype, device = expression.dtype, expression.device
    size = s.random_render_size

    def uniform(shape: tuple[int, ...], low: float, high: float) -> Tensor:
        return (low + (high - low) * torch.rand(shape, generator=generator, dtype=dtype)).to(device)

    yaw = math.radians(s.random_yaw_degrees) * float(uniform((1,), -1, 1))
    pitch = math.radians(s.random_pitch_degrees) * float(uniform((1,), -1, 1))
    view = random_view(camera, centre, yaw, pitch)
    # A few random expression weights on top of the fitted ones.
    boost = uniform(tuple(expression.shape), 0, s.random_expression) * (uniform(tuple(expression.shape), 0, 1) < 0.15)
    expr = torch.clamp(expression + boost, model.expression_min.to(dtype), model.expression_max.to(dtype))
    vertices = model.vertices(identity, expr)
    # The light turned about the head centre by up to ``random_light`` radians, its colour
    # scaled by up to that fraction.
    turn = axis_angle_to_matrix(uniform((1, 3), -s.random_light, s.random_light))
    position = centre + ((light.position - centre)[:, None, :] @ turn.transpose(-1, -2))[:, 0]
    colour = light.colour * (1 + uniform((1, 3), -s.random_light, s.random_light))
    random_light = PointLight(position, colour, light.ambient)
    width, height = target.size
    with torch.no_grad():
        marks = view.project(vertices[:, model.landmark_indices], width, height)[0, :, :2].cpu().numpy()
    warp = ChipWarp(identity_net.chip_transform(marks), identity_net.chip_size)
    window = warp.window()
    out = renderer(vertices, texture, view, random_light, size, size, image_size=target.size, window=window)
    windows.append(window)
    warps.append(warp)
    return out.image * out.mask + target.background * (1 - out.mask)
