"""Pinhole camera of paper section 3.2: position, look-at point, up vector and focal length.

The camera frame follows OpenCV (x right, y down, z forward) so that projection lands directly
in image pixels with y down (see docs/conventions.md). ``focal`` is the focal length divided by
the image width, which keeps the parameter independent of the render resolution: the same
camera renders the 224 px fitting image and the full-size preview.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_EPS = 1e-9


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(_EPS)


@dataclass(frozen=True)
class Camera:
    """A batch of pinhole cameras; every field is batch-first."""

    position: Tensor  # (B, 3) world position of the centre of projection
    look_at: Tensor  # (B, 3) point the optical axis passes through
    up: Tensor  # (B, 3) world up direction (need not be orthogonal to the axis)
    focal: Tensor  # (B,) focal length / image width

    @property
    def batch_size(self) -> int:
        return self.position.shape[0]

    def rotation(self) -> Tensor:
        """World-to-camera rotation (B, 3, 3); rows are the camera's right, down, forward axes."""
        forward = _normalize(self.look_at - self.position)
        right = _normalize(torch.linalg.cross(forward, self.up, dim=-1))
        down = torch.linalg.cross(forward, right, dim=-1)
        return torch.stack([right, down, forward], dim=-2)

    def world_to_camera(self, points: Tensor) -> Tensor:
        """Points (B, N, 3) in world space to the camera frame (x right, y down, z forward)."""
        rot = self.rotation()
        return torch.einsum("bij,bnj->bni", rot, points - self.position[:, None, :])

    def project(
        self,
        points: Tensor,
        width: int,
        height: int,
        window: tuple[float, float, float, float] | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Project world points (B, N, 3) to (B, N, 3): pixel x, pixel y, depth along the axis.

        ``width`` and ``height`` are the photo's size, which fixes the intrinsics. Pixel
        coordinates put the image's top-left corner at (0, 0), so pixel (i, j) has its centre at
        (j + 0.5, i + 0.5). With ``window`` = (x0, y0, x1, y1) in photo pixels and ``out_size`` =
        (out_width, out_height), coordinates are those of that crop resampled to the output size:
        this is how the fitting renders a face crop at 224 x 224 without changing the camera.
        """
        cam_x, cam_y, z = self.world_to_camera(points).unbind(-1)
        # Sizes may be numbers or (B,) tensors (a batch of photos of different sizes).
        w = width[:, None] if isinstance(width, Tensor) and width.ndim == 1 else width
        h = height[:, None] if isinstance(height, Tensor) and height.ndim == 1 else height
        f_px = self.focal[:, None] * w
        safe_z = torch.where(z.abs() < _EPS, torch.full_like(z, _EPS), z)
        scale = f_px / safe_z
        x = cam_x * scale + 0.5 * w
        y = cam_y * scale + 0.5 * h
        if window is not None:
            x0, y0, x1, y1 = window
            out_w, out_h = out_size if out_size is not None else (width, height)
            x = (x - x0) * (out_w / (x1 - x0))
            y = (y - y0) * (out_h / (y1 - y0))
        return torch.stack([x, y, z], dim=-1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Camera":
        return Camera(*(t.to(device=device, dtype=dtype) for t in (self.position, self.look_at, self.up, self.focal)))

    def detach(self) -> "Camera":
        return Camera(self.position.detach(), self.look_at.detach(), self.up.detach(), self.focal.detach())

    def view(self, index: int) -> "Camera":
        """Camera ``index`` of the batch, as a batch of one."""
        sl = slice(index, index + 1)
        return Camera(self.position[sl], self.look_at[sl], self.up[sl], self.focal[sl])
