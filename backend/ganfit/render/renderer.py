"""The image formation function R(S, T, c, l) of paper eq. 7: mesh + UV texture + camera + light.

A small composition of the camera, the rasteriser and the shader, in the spirit of pytorch3d's
renderer: each piece is usable alone (the landmark stage only needs ``Camera.project``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .camera import Camera
from .rasterizer import Fragments, rasterize
from .shading import PhongMaterial, PointLight, phong, sample_texture, vertex_normals


@dataclass(frozen=True)
class RenderOutput:
    """What one render returns; images are batch-first, channels-first, float in [0, inf)."""

    image: Tensor  # (B, 3, H, W) shaded colour, background where the mask is 0
    mask: Tensor  # (B, 1, H, W) 1 where the head covers the pixel centre
    depth: Tensor  # (B, 1, H, W) depth along the camera axis, 0 in the background
    fragments: Fragments


class MeshRenderer(nn.Module):
    """Renders a fixed-topology textured mesh; topology and UVs are buffers, all else is input."""

    def __init__(
        self,
        faces: Tensor,
        uvs: Tensor,
        uv_faces: Tensor,
        material: PhongMaterial = PhongMaterial(),
        cull_backfaces: bool = True,
    ):
        """``cull_backfaces`` needs faces wound counter-clockwise seen from outside (true of the
        default head); it halves rasterisation work. Turn it off for open or unoriented meshes."""
        super().__init__()
        self.cull_backfaces = cull_backfaces
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("uvs", uvs.float(), persistent=False)
        self.register_buffer("uv_faces", uv_faces.long(), persistent=False)
        self.register_buffer("corner_uvs", uvs.float()[uv_faces.long()], persistent=False)  # (F, 3, 2)
        self.material = material

    def forward(
        self,
        vertices: Tensor,
        texture: Tensor,
        camera: Camera,
        light: PointLight,
        height: int,
        width: int,
        background: float | Tensor = 0.0,
        image_size: tuple[int, int] | None = None,
        window: tuple[float, float, float, float] | None = None,
    ) -> RenderOutput:
        """Render vertices (B, V, 3) with textures (B, 3, Ht, Wt) into (B, 3, height, width).

        By default the output is the whole photo at its own size. ``image_size`` = (photo width,
        photo height) with ``window`` = (x0, y0, x1, y1) renders only that crop of the photo's
        view, resampled to (height, width).
        """
        if image_size is None:
            screen = camera.project(vertices, width, height)
        else:
            photo_w, photo_h = image_size
            crop = window if window is not None else (0.0, 0.0, float(photo_w), float(photo_h))
            screen = camera.project(vertices, photo_w, photo_h, window=crop, out_size=(width, height))
        normals = vertex_normals(vertices, self.faces)
        frags = rasterize(
            screen, self.faces, height, width, self.cull_backfaces,
            attributes=torch.cat([vertices, normals], -1),
            corner_attributes=self.corner_uvs,
        )
        position, normal, uv = frags.attributes.split([3, 3, 2], dim=-1)
        albedo = sample_texture(texture, uv, frags.batch)
        colour = phong(albedo, position, normal, frags.batch, light, camera.position, self.material)
        image = frags.scatter(colour, background)
        depth = frags.scatter(frags.depth[:, None])
        return RenderOutput(image=image, mask=frags.mask(vertices.dtype), depth=depth, fragments=frags)
