"""Deferred Phong shading (paper 3.2): interpolate, sample the UV texture, light.

Everything here is ordinary differentiable tensor code on the compact fragments from the
rasteriser, so gradients reach the texture, the vertices (through positions and normals), the
camera (through the view vector and the barycentrics) and the light.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .rasterizer import Fragments


@dataclass(frozen=True)
class PointLight:
    """One point light plus ambient colour, batch-first. No distance falloff (see conventions)."""

    position: Tensor  # (B, 3) world position
    colour: Tensor  # (B, 3) RGB intensity of the direct light
    ambient: Tensor  # (B, 3) RGB ambient colour

    def detach(self) -> "PointLight":
        return PointLight(self.position.detach(), self.colour.detach(), self.ambient.detach())


@dataclass(frozen=True)
class PhongMaterial:
    """Specular part of the Phong model; the diffuse albedo comes from the texture.

    The default has no specular term: until the texture prior exists the albedo is the photo
    itself, which already holds the photo's highlights.
    """

    specular: float = 0.0
    shininess: float = 20.0


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted smooth normals (B, V, 3)."""
    tri = vertices[:, faces]  # (B, F, 3, 3)
    face_n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals = normals.index_add(1, faces[:, k], face_n)
    return normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def interpolate(fragments: Fragments, attributes: Tensor, attribute_faces: Tensor) -> Tensor:
    """Barycentric interpolation of per-vertex attributes (B, V, C) indexed by (F, 3) faces.

    One flat ``index_select``, whose backward is a single ``index_add`` (advanced indexing
    would backpropagate through a slower sorting ``index_put``).
    """
    batch, num, channels = attributes.shape
    idx = attribute_faces[fragments.triangle]  # (N, 3)
    if batch > 1:
        idx = idx + (fragments.batch * num)[:, None]
    corner = attributes.reshape(batch * num, channels).index_select(0, idx.reshape(-1)).reshape(-1, 3, channels)
    return (fragments.bary[..., None].to(corner.dtype) * corner).sum(1)


def sample_texture(texture: Tensor, uv: Tensor, batch: Tensor) -> Tensor:
    """Bilinear lookup of textures (B, C, Ht, Wt) at uv (N, 2) (v up) for samples of ``batch``.

    Written as one gather of the four neighbouring texels rather than grid_sample, so samples
    of different images need no padding. Texel centres follow the usual convention; lookups
    clamp at the border.
    """
    b, c, th, tw = texture.shape
    x = uv[:, 0] * tw - 0.5
    y = (1.0 - uv[:, 1]) * th - 0.5
    x0 = torch.floor(x).detach()
    y0 = torch.floor(y).detach()
    fx = x - x0
    fy = y - y0
    x0 = x0.long()
    y0 = y0.long()
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], -1).clamp(0, tw - 1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], -1).clamp(0, th - 1)
    index = ys * tw + xs + (batch * (th * tw))[:, None]  # (N, 4)
    flat = texture.permute(0, 2, 3, 1).reshape(b * th * tw, c)
    texels = flat.index_select(0, index.reshape(-1)).reshape(-1, 4, c)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    return (weights[..., None] * texels).sum(1)


def phong(
    albedo: Tensor,
    position: Tensor,
    normal: Tensor,
    batch: Tensor,
    light: PointLight,
    eye: Tensor,
    material: PhongMaterial = PhongMaterial(),
) -> Tensor:
    """Phong colour per sample: albedo * (ambient + colour * max(n.l, 0)) + specular."""
    n = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    to_light = light.position[batch] - position
    l_dir = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n_dot_l = (n * l_dir).sum(-1, keepdim=True)
    diffuse = light.colour[batch] * n_dot_l.clamp_min(0.0)
    colour = albedo * (light.ambient[batch] + diffuse)
    if material.specular > 0:
        to_eye = eye[batch] - position
        v_dir = to_eye / to_eye.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        reflect = 2 * n_dot_l * n - l_dir
        r_dot_v = (reflect * v_dir).sum(-1, keepdim=True).clamp_min(0.0)
        lit = (n_dot_l > 0).to(albedo.dtype)
        colour = colour + material.specular * light.colour[batch] * lit * r_dot_v**material.shininess
    return colour
