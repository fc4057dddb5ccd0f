"""Deferred Phong shading (paper 3.2): interpolate, sample the UV texture, light.

Everything here is ordinary differentiable tensor code on the compact fragments from the
rasteriser, so gradients reach the texture, the vertices (through positions and normals), the
camera (through the view vector and the barycentrics) and the light.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .rasterizer import Fragments, interpolate_corners


@dataclass(frozen=True)
class PointLight:
    """One point light plus ambient colour, batch-first. No distance falloff (see conventions)."""

    position: Tensor  # (B, 3) world position
    colour: Tensor  # (B, 3) RGB intensity of the direct light
    ambient: Tensor  # (B, 3) RGB ambient colour

    def detach(self) -> "PointLight":
        return PointLight(self.position.detach(), self.colour.detach(), self.ambient.detach())

    def view(self, index: int) -> "PointLight":
        """Light ``index`` of the batch, as a batch of one."""
        sl = slice(index, index + 1)
        return PointLight(self.position[sl], self.colour[sl], self.ambient[sl])


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
    batch, num, _ = vertices.shape
    offsets = (torch.arange(batch, device=faces.device) * num)[:, None, None]
    flat_faces = (faces[None] + offsets).reshape(-1)
    tri = vertices.reshape(-1, 3).index_select(0, flat_faces).reshape(batch, -1, 3, 3)
    a, b, c = tri.unbind(2)
    face_n = torch.linalg.cross(b - a, c - a, dim=-1)
    # Each face adds its (area-weighted) normal to its three corners: one index_add.
    corner_n = face_n[:, :, None, :].expand(-1, -1, 3, -1).reshape(-1, 3)
    normals = torch.zeros(batch * num, 3, dtype=vertices.dtype, device=vertices.device).index_add(0, flat_faces, corner_n)
    normals = normals.reshape(batch, num, 3)
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
    return interpolate_corners(fragments.bary, corner)


def sample_texture(texture: Tensor, uv: Tensor, batch: Tensor) -> Tensor:
    """Bilinear lookup of textures (B, C, Ht, Wt) at uv (N, 2) (v up) for samples of ``batch``.

    ``grid_sample`` (texel centres at half-integers, clamped at the border) is the fastest
    bilinear lookup with a gradient on every device; samples are grouped per image.
    """
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1).to(texture.dtype)
    if texture.shape[0] == 1:
        out = F.grid_sample(texture, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, 0].T
    colours = grid.new_empty(grid.shape[0], texture.shape[1])
    parts = []
    for b in range(texture.shape[0]):
        rows = torch.nonzero(batch == b).squeeze(1)
        out = F.grid_sample(texture[b : b + 1], grid[rows][None, None], mode="bilinear", padding_mode="border", align_corners=False)
        parts.append((rows, out[0, :, 0].T))
    order = torch.cat([r for r, _ in parts])
    values = torch.cat([v for _, v in parts])
    return colours.index_copy(0, order, values)


def _per_sample(values: Tensor, batch: Tensor) -> Tensor:
    """Per-image values (B, C) for each sample; a broadcast view when B = 1 (whose backward is
    a cheap sum, where index_select's would be a serial scatter into one row)."""
    if values.shape[0] == 1:
        return values.expand(batch.shape[0], -1)
    return values.index_select(0, batch)


def srgb_to_linear(value: Tensor) -> Tensor:
    """sRGB-encoded values (a texture, a photo) -> linear light (IEC 61966-2-1), differentiable."""
    value = value.clamp_min(0.0)
    return torch.where(value <= 0.04045, value / 12.92, ((value + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(value: Tensor) -> Tensor:
    """Linear light -> sRGB-encoded values (what Blender's Standard view transform applies).
    The power branch sees values clamped to its own range, so its gradient stays finite where
    ``torch.where`` picks the linear branch."""
    value = value.clamp_min(0.0)
    return torch.where(value <= 0.0031308, value * 12.92, 1.055 * value.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def phong(
    albedo: Tensor,
    position: Tensor,
    normal: Tensor,
    batch: Tensor,
    light: PointLight,
    eye: Tensor,
    material: PhongMaterial = PhongMaterial(),
) -> Tensor:
    """Phong colour per sample: albedo * (ambient + colour * max(n.l, 0)) + specular, in linear
    light, returned sRGB-encoded like the photos it is compared with.

    The albedo (texture) is stored sRGB-encoded, as image files and Blender's sRGB colour space
    expect; it is decoded to linear reflectance, lit, and the light's sum encoded again. So a
    Blender scene with the texture as sRGB colour data and the Standard view transform renders
    the same picture (docs/blender.md), and an artist's scene keeps its colour management.
    n.l is computed as a dot product of the raw vectors over the product of their lengths,
    which saves normalising two (N, 3) arrays (and their backward) on the hot path.
    """
    to_light = _per_sample(light.position, batch) - position
    lengths = ((normal * normal).sum(-1, keepdim=True) * (to_light * to_light).sum(-1, keepdim=True)).clamp_min(1e-24)
    n_dot_l = (normal * to_light).sum(-1, keepdim=True) * torch.rsqrt(lengths)
    light_colour = _per_sample(light.colour, batch)
    colour = srgb_to_linear(albedo) * (_per_sample(light.ambient, batch) + light_colour * n_dot_l.clamp_min(0.0))
    if material.specular > 0:
        n = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        l_dir = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        to_eye = _per_sample(eye, batch) - position
        v_dir = to_eye / to_eye.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        reflect = 2 * n_dot_l * n - l_dir
        r_dot_v = (reflect * v_dir).sum(-1, keepdim=True).clamp_min(0.0)
        lit = (n_dot_l > 0).to(albedo.dtype)
        colour = colour + material.specular * light_colour * lit * r_dot_v**material.shininess
    return linear_to_srgb(colour)
