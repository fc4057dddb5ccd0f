"""Stage 2 of paper 3.4 for the interim texture model: lighting from the pixel loss (eq. 11).

Until the texture prior exists, the texture is the photo itself, projected into UV space. If
texture and light were optimised freely together, the texture alone would explain every pixel
and the light would stay wherever it started. So the light is fitted first against a constant
skin albedo with an L1 pixel loss over the face region (robust to eyes, brows and lips), and
then the projected photo is divided by that shading to give the albedo texture
(``texture_projection``). Rendering albedo x fitted light reproduces the photo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from ..render import Camera, MeshRenderer, PointLight
from .optim import Adam, check_finite_loss
from .progress import ProgressEvent, ProgressFn, no_progress
from .settings import AppearanceStageSettings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FaceCrop:
    """A square window of the photo around the face, resampled for the pixel loss."""

    window: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels
    image: Tensor  # (1, 3, S, S) photo crop in [0, 1]
    region: Tensor  # (1, 1, S, S) 1 inside the face outline (and inside the photo)


@dataclass
class LightingFit:
    light: PointLight  # detached
    skin_albedo: Tensor  # (3,) the constant albedo the light was fitted against
    losses: list[float]


def light_from_direction(centre: Tensor, distance: Tensor, direction: Tensor, colour: Tensor, ambient: Tensor) -> PointLight:
    """Point lights at ``distance`` from the head centre along ``direction`` (batch-first)."""
    unit = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return PointLight(position=centre + distance[:, None] * unit, colour=colour, ambient=ambient)


def fit_lighting(
    renderer: MeshRenderer,
    vertices: Tensor,
    camera: Camera,
    image_size: tuple[int, int],
    crop: FaceCrop,
    settings: AppearanceStageSettings = AppearanceStageSettings(),
    progress: ProgressFn = no_progress,
) -> LightingFit:
    """Fit point light position and colour, ambient colour and a skin albedo (batch 1)."""
    dtype, device = vertices.dtype, vertices.device
    size = crop.image.shape[-1]
    region = crop.region
    pixels = crop.image[0][:, region[0, 0] > 0.5]
    median = pixels.median(dim=1).values if pixels.numel() else torch.full((3,), 0.5, dtype=dtype, device=device)

    centre = vertices.mean(1).detach()
    distance = (camera.position - centre).norm(dim=-1).detach()
    towards_camera = (camera.position - centre) / distance[:, None]
    direction = (towards_camera + 0.3 * camera.up).detach().clone().requires_grad_(True)
    colour = torch.full((1, 3), 0.6, dtype=dtype, device=device).requires_grad_(True)
    ambient = torch.full((1, 3), 0.4, dtype=dtype, device=device).requires_grad_(True)
    albedo = (median / 1.0).clamp(0.05, 1.0).reshape(1, 3, 1, 1).clone().requires_grad_(True)

    optimiser = Adam([direction, colour, ambient, albedo], lr=settings.learning_rate)
    losses: list[float] = []
    mask_total = region.sum().clamp_min(1.0)
    for step in range(settings.steps):
        optimiser.zero_grad(set_to_none=True)
        light = light_from_direction(centre, distance, direction, colour, ambient)
        out = renderer(vertices, albedo, camera, light, size, size, image_size=image_size, window=crop.window)
        weight = region * out.mask
        pixel = ((out.image - crop.image).abs() * weight).sum() / (3 * weight.sum().clamp_min(1.0))
        # Albedo times light intensity is all the photo can tell; pin the intensity's scale.
        scale = (colour + ambient).mean() - 1.0
        loss = pixel + settings.light_prior_weight * scale**2
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            colour.clamp_(0.0, 4.0)
            ambient.clamp_(0.0, 4.0)
            albedo.clamp_(0.01, 1.0)
        losses.append(float(loss.detach()))
        check_finite_loss("lighting stage", step, losses[-1],
                          "the photo's face region may be empty or corrupt; try another photo, or report it with the photo")
        coverage = float(weight.sum() / mask_total)
        progress(ProgressEvent("lighting", step + 1, settings.steps, {"pixel": float(pixel.detach()), "coverage": coverage}))
    with torch.no_grad():
        light = light_from_direction(centre, distance, direction, colour, ambient)
    log.info("lighting stage: pixel L1 %.4f", losses[-1] if losses else float("nan"))
    return LightingFit(light=light.detach(), skin_albedo=albedo.detach().reshape(3), losses=losses)
