"""Differentiable face alignment: the similarity warp from an image to an identity network's chip.

Identity networks see faces cut out by a similarity transform computed from landmarks (dlib:
150x150 chips from the 68 iBUG points; ArcFace: 112x112 chips from five points). For the
identity and content losses (paper eqs. 9-10) the *same* warp must take the photo and every
rendered image to the chip, and gradients must flow from the network back into the render. So the
warp here is a ``grid_sample`` whose transform is a constant per image (computed from landmarks
by the identity network's own rule, e.g. ``dlib.get_face_chip_details``).

Coordinates: image positions are continuous pixels, pixel (i, j) covering [j, j+1) x [i, i+1)
(centre at +0.5), as in ``face.detection`` and ``render.camera``. A ``ChipWarp`` maps chip pixel
*indices* (u, v) = (column, row) to image positions.

Aliasing: a face larger than the chip is first resampled to a square window with antialiasing
(photos) or rendered at that window's size (renders), then low-pass filtered to the chip's
sampling rate before the bilinear lookup, so detail finer than a chip pixel never aliases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Window = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


@dataclass(frozen=True)
class ChipWarp:
    """Where an identity network's chip lies in one image."""

    transform: np.ndarray  # (2, 3): image position = transform @ (u, v, 1), u, v chip pixel indices
    chip_size: int

    @property
    def scale(self) -> float:
        """Image pixels per chip pixel."""
        return float(math.sqrt(abs(np.linalg.det(self.transform[:, :2]))))

    def corners(self) -> np.ndarray:
        """(4, 2) image positions of the chip's outer corners."""
        s = self.chip_size
        uv = np.array([[-0.5, -0.5, 1], [s - 0.5, -0.5, 1], [s - 0.5, s - 0.5, 1], [-0.5, s - 0.5, 1]])
        return uv @ self.transform.T

    def window(self, include: np.ndarray | None = None, margin: float = 0.02) -> Window:
        """A square, axis-aligned window around the chip (and the points ``include``, e.g. the
        face outline for the pixel loss), ``margin`` of its side added on each side."""
        points = self.corners() if include is None else np.concatenate([self.corners(), include], 0)
        lo, hi = points.min(0), points.max(0)
        centre = (lo + hi) / 2
        half = float((hi - lo).max()) / 2 * (1 + 2 * margin)
        return (float(centre[0] - half), float(centre[1] - half), float(centre[0] + half), float(centre[1] + half))

    def grid(self, window: Window, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """(1, S, S, 2) ``grid_sample`` grid (align_corners=False) that reads the chip out of an
        image covering ``window``."""
        s = self.chip_size
        u = torch.arange(s, dtype=torch.float64)
        vv, uu = torch.meshgrid(u, u, indexing="ij")
        uv1 = torch.stack([uu, vv, torch.ones_like(uu)], -1)
        xy = uv1 @ torch.from_numpy(self.transform).T
        x0, y0, x1, y1 = window
        norm = torch.stack([(xy[..., 0] - x0) / (x1 - x0), (xy[..., 1] - y0) / (y1 - y0)], -1) * 2 - 1
        return norm[None].to(device=device, dtype=dtype)


def crop_window(image: Tensor, window: Window, size: int) -> Tensor:
    """(B, C, size, size) resampling of ``window`` of (B, C, H, W) images, antialiased; outside
    the image reads as zero. Whole-pixel windows crop exactly; others are resampled."""
    _, _, h, w = image.shape
    x0, y0, x1, y1 = window
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = math.ceil(x1), math.ceil(y1)
    pad = (max(0, -ix0), max(0, ix1 - w), max(0, -iy0), max(0, iy1 - h))
    padded = F.pad(image, pad)
    crop = padded[..., iy0 + pad[2] : iy1 + pad[2], ix0 + pad[0] : ix1 + pad[0]]
    # Shrink with antialiasing to about the target size, then place the exact (sub-pixel) window.
    side = max(crop.shape[-1], crop.shape[-2])
    if side > 2 * size:
        factor = size / (x1 - x0)
        new = (max(1, round(crop.shape[-2] * factor * 2)), max(1, round(crop.shape[-1] * factor * 2)))
        crop = F.interpolate(crop, size=new, mode="bilinear", antialias=True, align_corners=False)
    scale_x = crop.shape[-1] / (ix1 - ix0)
    scale_y = crop.shape[-2] / (iy1 - iy0)
    sub = ((x0 - ix0) * scale_x, (y0 - iy0) * scale_y, (x1 - ix0) * scale_x, (y1 - iy0) * scale_y)
    return _resample(crop, sub, size)


def _resample(image: Tensor, window: Window, size: int) -> Tensor:
    """Bilinear, area-prefiltered lookup of a sub-window of ``image`` (its own pixel units)."""
    x0, y0, x1, y1 = window
    factor = (x1 - x0) / size  # source pixels per output pixel
    if factor > 1.0:
        image = gaussian_blur(image, 0.5 * math.sqrt(factor * factor - 1.0))
    _, _, h, w = image.shape
    t = (torch.arange(size, dtype=image.dtype, device=image.device) + 0.5) / size
    gx = (x0 + t * (x1 - x0)) / w * 2 - 1
    gy = (y0 + t * (y1 - y0)) / h * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None].expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflected borders (sigma in pixels)."""
    if sigma < 0.2:
        return image
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def extract_chips(images: Tensor | list[Tensor], windows: list[Window], warps: list[ChipWarp]) -> Tensor:
    """Chips (B, C, S, S) from window images (B, C, R, R) (or a list of (1, C, R_i, R_i)), one
    window and warp per image.

    Each window image is low-pass filtered to the chip's sampling rate (when the window has more
    pixels per chip pixel than one) and sampled bilinearly: differentiable w.r.t. ``images``.
    """
    chips = []
    if isinstance(images, list):
        images = [image for batch in images for image in batch]
    for image, window, warp in zip(images, windows, warps):
        size = image.shape[-1]
        window_px_per_chip_px = warp.scale * size / (window[2] - window[0])
        if window_px_per_chip_px > 1.0:
            image = gaussian_blur(image[None], 0.5 * math.sqrt(window_px_per_chip_px**2 - 1.0))[0]
        grid = warp.grid(window, image.device, image.dtype)
        chips.append(F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False))
    return torch.cat(chips, 0)
