"""The fitted parameters of paper 3.2-3.4 as one batch-first object (DESIGN.md, params.py).

GANFit's optimisation (``fit.joint_stage``) and, later, the regression network of section 4
produce the same thing: a camera pose, identity and expression coefficients, a point light and
ambient colour, and a texture latent. ``FitParams`` holds them so that one objective
(``ganfit.objective``) can score either. Row b of every batched field belongs to photo b;
``identity`` and ``texture_latent`` have one row when photos of one person share them (eq. 14)
or B rows for B different people.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .fit.appearance_stage import light_from_direction
from .fit.pose import HeadPose
from .render import Camera, PointLight

__all__ = ["FitParams", "LightParams"]


@dataclass
class LightParams:
    """Optimisable point light: direction from the head centre (the distance stays fixed)."""

    direction: Tensor  # (B, 3)
    colour: Tensor  # (B, 3)
    ambient: Tensor  # (B, 3)
    centre: Tensor  # (B, 3) fixed
    distance: Tensor  # (B,) fixed

    @staticmethod
    def from_light(light: PointLight, centre: Tensor) -> "LightParams":
        offset = light.position - centre
        distance = offset.norm(dim=-1)
        return LightParams(offset / distance[:, None], light.colour.clone(), light.ambient.clone(), centre, distance)

    def parameters(self) -> list[Tensor]:
        return [self.direction, self.colour, self.ambient]

    def light(self) -> PointLight:
        return light_from_direction(self.centre, self.distance, self.direction, self.colour, self.ambient)


def _moved(value: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> Any:
    """A tensor, or a dataclass of tensors, on ``device`` (floating tensors also in ``dtype``)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    if value is not None and hasattr(value, "__dataclass_fields__"):
        return replace(value, **{f.name: _moved(getattr(value, f.name), device, dtype) for f in fields(value)})
    return value


@dataclass(frozen=True)
class FitParams:
    """Every parameter fitting optimises, for a batch of B photos."""

    pose: HeadPose  # (B,) rows: rotation, offset, log depth, focal
    identity: Tensor  # (1 or B, Ki) in units of the prior's standard deviation
    expression: Tensor  # (B, Ke) ARKit weights
    light: LightParams  # (B,) rows: direction, colour, ambient about a fixed centre and distance
    texture_latent: Tensor | None = None  # (1 or B, D) with a texture model, else None

    @property
    def batch(self) -> int:
        return int(self.expression.shape[0])

    def camera(self) -> Camera:
        return self.pose.camera()

    def point_light(self) -> PointLight:
        return self.light.light()

    def row(self, b: int) -> FitParams:
        """Photo b's parameters as a batch of one (a shared identity or latent row stays shared)."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else (t if t.shape[0] == 1 else t[b:b + 1])

        pose, light = self.pose, self.light
        return FitParams(
            pose=HeadPose(*(t[b:b + 1] for t in (pose.rotation, pose.offset, pose.log_depth, pose.focal))),
            identity=self.identity if self.identity.shape[0] == 1 else self.identity[b:b + 1],
            expression=self.expression[b:b + 1],
            light=LightParams(*(t[b:b + 1] for t in (light.direction, light.colour, light.ambient, light.centre,
                                                     light.distance))),
            texture_latent=pick(self.texture_latent),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FitParams:
        """The same parameters on another device and/or floating dtype."""
        return _moved(self, device, dtype)

    def detach(self) -> FitParams:
        return FitParams(
            pose=self.pose.detach(),
            identity=self.identity.detach(),
            expression=self.expression.detach(),
            light=LightParams(*(t.detach() for t in (self.light.direction, self.light.colour, self.light.ambient,
                                                     self.light.centre, self.light.distance))),
            texture_latent=None if self.texture_latent is None else self.texture_latent.detach(),
        )
