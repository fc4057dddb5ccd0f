"""Rasterisation to triangle ids and barycentrics (the first half of deferred shading, paper 3.2).

Visibility (which triangle covers a pixel) is a discrete decision with no useful gradient, so it
is computed without autograd in one vectorised pass: every triangle lists the pixel centres in its
bounding box, edge functions keep those inside, and a z-buffer keeps the nearest. The second pass
recomputes perspective-correct barycentrics *with* autograd for the visible pixels only, which is
how gradients reach vertex positions and through them shape, expression and camera.

Fragments are stored compactly (only covered pixels), so shading cost scales with the face's area
rather than the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_NEAR = 1e-6
# Grid sizes of the broadcast candidate test; a wider triangle enumerates its own box.
_GRID_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass(frozen=True)
class Fragments:
    """Visible surface samples of a batch of images, one row per covered pixel."""

    pixel_index: Tensor  # (N,) long, flat index into B * H * W
    triangle: Tensor  # (N,) long, index into the faces
    batch: Tensor  # (N,) long, batch index of each sample
    bary: Tensor  # (N, 3) perspective-correct barycentrics (differentiable)
    depth: Tensor  # (N,) depth along the camera axis (differentiable)
    batch_size: int
    height: int
    width: int

    def scatter(self, values: Tensor, background: float | Tensor = 0.0) -> Tensor:
        """Place per-sample values (N, C) into images (B, C, H, W)."""
        channels = values.shape[-1]
        flat = values.new_zeros(self.batch_size * self.height * self.width, channels)
        if not isinstance(background, Tensor) or background.numel() == 1:
            flat = flat + background
        else:
            flat = flat + background.reshape(1, channels).to(flat)
        flat = flat.index_copy(0, self.pixel_index, values)
        return flat.reshape(self.batch_size, self.height, self.width, channels).permute(0, 3, 1, 2)

    def mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Coverage (B, 1, H, W)."""
        flat = torch.zeros(self.batch_size * self.height * self.width, dtype=dtype, device=self.pixel_index.device)
        flat[self.pixel_index] = 1
        return flat.reshape(self.batch_size, 1, self.height, self.width)


def _edge_planes(xy: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-triangle planes over the screen: barycentric k = a_k x + b_k y + c_k, and 1/z likewise.

    Returns (planes (..., 4, 3): rows are the three barycentrics and 1/z, columns a, b, c; and the
    doubled signed area). Screen-space interpolation of 1/z is exact under perspective projection.
    """
    rows = []
    area2 = (xy[..., 1, 0] - xy[..., 0, 0]) * (xy[..., 2, 1] - xy[..., 0, 1]) - (
        xy[..., 1, 1] - xy[..., 0, 1]
    ) * (xy[..., 2, 0] - xy[..., 0, 0])
    safe = torch.where(area2.abs() > 1e-12, area2, torch.ones_like(area2))
    for k in range(3):
        p = xy[..., (k + 1) % 3, :]
        q = xy[..., (k + 2) % 3, :]
        a = -(q[..., 1] - p[..., 1]) / safe
        b = (q[..., 0] - p[..., 0]) / safe
        c = ((q[..., 1] - p[..., 1]) * p[..., 0] - (q[..., 0] - p[..., 0]) * p[..., 1]) / safe
        rows.append(torch.stack([a, b, c], -1))
    bary = torch.stack(rows, -2)  # (..., 3, 3)
    inv_z = 1.0 / z.clamp_min(_NEAR)
    inv_depth = (bary * inv_z[..., :, None]).sum(-2, keepdim=True)  # (..., 1, 3)
    return torch.cat([bary, inv_depth], -2), area2


def _covered_small(
    planes: Tensor, j0: Tensor, i0: Tensor, size: int, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Test a size x size pixel grid per triangle by broadcasting, keep the covered pixels.

    Returns (triangle row, pixel x, pixel y, 1/depth) of the covered pixel centres only.
    """
    d = torch.arange(size, device=planes.device)
    dd = d.to(planes.dtype)
    # Plane values at each grid's first pixel centre, then steps along x and y.
    base = planes[..., 0] * (j0.to(planes.dtype)[:, None] + 0.5) + planes[..., 1] * (i0.to(planes.dtype)[:, None] + 0.5)
    base = base + planes[..., 2]  # (T, 4)
    col = base[..., None] + planes[..., 1, None] * dd  # (T, 4, size) along y
    vals = col[..., :, None] + (planes[..., 0, None] * dd)[..., None, :]  # (T, 4, size, size)
    inside = vals[:, :3].amin(1) >= -1e-6
    inside &= ((j0[:, None] + d) < width)[:, None, :] & ((i0[:, None] + d) < height)[:, :, None]
    flat = torch.nonzero(inside.reshape(-1)).squeeze(1)
    cells = size * size
    row = flat // cells
    cell = flat - row * cells
    py = i0[row] + cell // size
    px = j0[row] + cell % size
    inv_depth = vals[:, 3].reshape(-1)[flat]
    return row, px, py, inv_depth


def _covered_general(
    planes: Tensor, j0: Tensor, i0: Tensor, bw: Tensor, bh: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Enumerate each triangle's own bounding box (for the few large triangles)."""
    counts = (bw * bh).long()
    total = int(counts.sum())
    row = torch.repeat_interleave(torch.arange(planes.shape[0], device=planes.device), counts, output_size=total)
    offset = torch.arange(total, device=planes.device) - (torch.cumsum(counts, 0) - counts)[row]
    width = bw.long()[row]
    px = j0[row] + offset % width
    py = i0[row] + offset // width
    pl = planes[row]
    vals = pl[..., 0] * (px.to(planes.dtype)[:, None] + 0.5) + pl[..., 1] * (py.to(planes.dtype)[:, None] + 0.5)
    vals = vals + pl[..., 2]
    keep = torch.nonzero(vals[:, :3].amin(1) >= -1e-6).squeeze(1)
    return row[keep], px[keep], py[keep], vals[keep, 3]


@torch.no_grad()
def _visible_triangles(
    screen: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False
) -> tuple[Tensor, Tensor]:
    """Z-buffer pass: (pixel_index, triangle) for every covered pixel, nearest triangle wins."""
    batch = screen.shape[0]
    num_faces = faces.shape[0]
    device = screen.device
    tri = screen[:, faces].reshape(batch * num_faces, 3, 3)
    xy = tri[..., :2]
    z = tri[..., 2]
    planes, area2 = _edge_planes(xy, z)

    # Pixel centres j + 0.5 inside [min, max] give j in [ceil(min - 0.5), floor(max - 0.5)].
    j0 = torch.ceil(xy[..., 0].amin(-1) - 0.5).clamp(0, width)
    j1 = torch.floor(xy[..., 0].amax(-1) - 0.5).clamp(-1, width - 1)
    i0 = torch.ceil(xy[..., 1].amin(-1) - 0.5).clamp(0, height)
    i1 = torch.floor(xy[..., 1].amax(-1) - 0.5).clamp(-1, height - 1)
    bw = (j1 - j0 + 1).clamp_min(0)
    bh = (i1 - i0 + 1).clamp_min(0)
    valid = (z.amin(-1) > _NEAR) & (area2.abs() > 1e-12) & (bw > 0) & (bh > 0)
    if cull_backfaces:
        valid &= area2 < 0  # counter-clockwise seen from outside is clockwise in y-down pixels
    keep = torch.nonzero(valid).squeeze(1)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if keep.numel() == 0:
        return empty, empty
    planes, j0, i0, bw, bh = planes[keep], j0[keep].long(), i0[keep].long(), bw[keep], bh[keep]
    # Each kept triangle's flat pixel offset of its image and its index in `faces`.
    image_base = (keep // num_faces) * (height * width)
    face_id = keep % num_faces

    # Most triangles of a face mesh cover a few pixels: test them on small fixed grids by
    # broadcasting, one grid size per bucket of similar extents (so little of each grid is
    # wasted), and enumerate the bounding boxes of the few large ones.
    extent = torch.maximum(bw, bh).long()
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    lower = 0
    for size in _GRID_SIZES:
        idx = torch.nonzero((extent > lower) & (extent <= size)).squeeze(1)
        lower = size
        if idx.numel():
            row, px, py, inv_depth = _covered_small(planes[idx], j0[idx], i0[idx], size, width, height)
            row = idx[row]
            parts.append((image_base[row] + py * width + px, face_id[row], inv_depth))
    idx = torch.nonzero(extent > lower).squeeze(1)
    if idx.numel():
        row, px, py, inv_depth = _covered_general(planes[idx], j0[idx], i0[idx], bw[idx], bh[idx])
        row = idx[row]
        parts.append((image_base[row] + py * width + px, face_id[row], inv_depth))
    if not parts:
        return empty, empty
    pixel, triangle, inv_depth = (torch.cat(x) if len(parts) > 1 else x[0] for x in zip(*parts))
    # Behind the camera or at infinity: not a surface.
    front = torch.nonzero(inv_depth > 0).squeeze(1)
    pixel, triangle, inv_depth = pixel[front], triangle[front], inv_depth[front]

    nearest = torch.full((batch * height * width,), float("-inf"), dtype=screen.dtype, device=device)
    nearest.scatter_reduce_(0, pixel, inv_depth, reduce="amax")
    winner = torch.nonzero(inv_depth == nearest[pixel]).squeeze(1)
    # Ties (shared edges at equal depth) resolve to the larger triangle index: deterministic.
    owner = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
    owner.scatter_reduce_(0, pixel[winner], triangle[winner], reduce="amax")
    pixel_index = torch.nonzero(owner >= 0).squeeze(1)
    return pixel_index, owner[pixel_index]


def rasterize(
    screen: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False
) -> Fragments:
    """Rasterise projected vertices (B, V, 3: pixel x, pixel y, depth) with triangles (F, 3).

    ``cull_backfaces`` skips triangles wound clockwise on screen (seen from behind when the
    mesh is wound counter-clockwise outward); it halves the work on closed meshes.
    """
    pixel_index, triangle = _visible_triangles(screen, faces, height, width, cull_backfaces)
    batch_index = pixel_index // (height * width)
    rest = pixel_index % (height * width)
    cx = (rest % width).to(screen.dtype) + 0.5
    cy = (rest // width).to(screen.dtype) + 0.5

    vertex_ids = (faces[triangle] + batch_index[:, None] * screen.shape[1]).reshape(-1)
    corners = screen.reshape(-1, 3).index_select(0, vertex_ids).reshape(-1, 3, 3)  # differentiable
    xy = corners[..., :2]
    z = corners[..., 2]
    w = []
    for k in range(3):
        p = xy[:, (k + 1) % 3]
        q = xy[:, (k + 2) % 3]
        w.append((q[:, 0] - p[:, 0]) * (cy - p[:, 1]) - (q[:, 1] - p[:, 1]) * (cx - p[:, 0]))
    screen_bary = torch.stack(w, -1)
    screen_bary = screen_bary / screen_bary.sum(-1, keepdim=True)
    # Perspective-correct barycentrics: weight by 1/z and renormalise.
    persp = screen_bary / z
    inv_depth = persp.sum(-1, keepdim=True)
    bary = persp / inv_depth
    return Fragments(
        pixel_index=pixel_index,
        triangle=triangle,
        batch=batch_index,
        bary=bary,
        depth=1.0 / inv_depth.squeeze(-1),
        batch_size=screen.shape[0],
        height=height,
        width=width,
    )
