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


class _Interpolate(torch.autograd.Function):
    """out[n] = sum_k bary[n, k] * corners[n, k, :], with a hand-written backward.

    Autograd's backward of the batched product forms the corner gradient as a batched outer
    product, the slowest part of the whole render's backward on CPU; an elementwise product
    gives the same numbers in about half the time.
    """

    @staticmethod
    def forward(ctx, bary: Tensor, corners: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(bary, corners)
        return torch.bmm(bary[:, None, :], corners).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        bary, corners = ctx.saved_tensors
        grad_bary = torch.bmm(corners, grad[:, :, None]).squeeze(-1) if ctx.needs_input_grad[0] else None
        grad_corners = bary[:, :, None] * grad[:, None, :] if ctx.needs_input_grad[1] else None
        return grad_bary, grad_corners


def interpolate_corners(bary: Tensor, corners: Tensor) -> Tensor:
    """Barycentric combination (N, C) of per-sample triangle corner values (N, 3, C)."""
    return _Interpolate.apply(bary, corners.to(bary.dtype))


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
    attributes: Tensor | None = None  # (N, C) attributes interpolated by ``rasterize``

    def scatter(self, values: Tensor, background: float | Tensor = 0.0) -> Tensor:
        """Place per-sample values (N, C) into images (B, C, H, W).

        Written as a gather from [background; values] through a per-pixel row map: its
        backward is one index_add, cheaper than index_copy's.
        """
        channels = values.shape[-1]
        back = torch.as_tensor(background, dtype=values.dtype, device=values.device).reshape(-1)
        rows = torch.cat([back.expand(channels)[None], values])
        lookup = torch.zeros(self.batch_size * self.height * self.width, dtype=torch.long, device=values.device)
        lookup[self.pixel_index] = torch.arange(1, values.shape[0] + 1, device=values.device)
        flat = rows.index_select(0, lookup)
        return flat.reshape(self.batch_size, self.height, self.width, channels).permute(0, 3, 1, 2)

    def mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Coverage (B, 1, H, W)."""
        flat = torch.zeros(self.batch_size * self.height * self.width, dtype=dtype, device=self.pixel_index.device)
        flat[self.pixel_index] = 1
        return flat.reshape(self.batch_size, 1, self.height, self.width)


def _signed_area2(x: Tensor, y: Tensor) -> Tensor:
    """Twice the signed screen area of triangles given corner coordinates x, y (T, 3)."""
    return (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])


def _edge_planes(x: Tensor, y: Tensor, z: Tensor, area2: Tensor) -> Tensor:
    """Per-triangle planes over the screen: barycentric k = a_k x + b_k y + c_k, and 1/z likewise.

    Corners x, y, z (T, 3). Returns planes (T, 4, 3): rows are the three barycentrics and 1/z,
    columns a, b, c. Screen-space interpolation of 1/z is exact under perspective projection.
    """
    # Corner k's barycentric is the edge function of the opposite edge p -> q over the area.
    px, py = x.roll(-1, dims=1), y.roll(-1, dims=1)
    dx, dy = x.roll(-2, dims=1) - px, y.roll(-2, dims=1) - py
    inv_area = 1.0 / area2[:, None]
    bary = torch.stack([-dy * inv_area, dx * inv_area, (dy * px - dx * py) * inv_area], -1)  # (T, 3, 3)
    inv_depth = (bary / z.clamp_min(_NEAR)[:, :, None]).sum(1, keepdim=True)  # (T, 1, 3)
    return torch.cat([bary, inv_depth], 1)


def _covered_spans(planes: Tensor, i0: Tensor, bh: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scan conversion: for every (triangle, pixel row) the exact span of covered pixel centres.

    Each edge function a x + b y + c >= 0 bounds x from one side on a given row, so the
    covered columns follow without testing any pixel that is not covered. Returns (triangle
    row, pixel x, pixel y, 1/depth) of every covered pixel centre.
    """
    device = planes.device
    # Per triangle, which edges bound a row from the left (a > 0) and which from the right
    # (a < 0) does not depend on the row: encode it once as penalties that switch a bound
    # off, so the per-row work is adds and max/min. A horizontal edge (a = 0) gets a tiny
    # positive a: its bound is then -huge where the row is inside it and +huge where not.
    a = planes[:, :3, 0]
    a = torch.where(a == 0, torch.full_like(a, 1e-20), a)
    off = 1e30
    lower_pen = (a < 0).to(planes.dtype) * off
    upper_pen = (a > 0).to(planes.dtype) * off
    table = torch.stack([a, planes[:, :3, 1], planes[:, :3, 2], lower_pen, upper_pen, planes[:, 3]], 1)  # (T, 6, 3)

    counts = bh.long()
    tri = torch.repeat_interleave(torch.arange(planes.shape[0], device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    py = i0.index_select(0, tri) + (torch.arange(tri.shape[0], device=device) - first.index_select(0, tri))
    y = py.to(planes.dtype) + 0.5
    p = table.index_select(0, tri)  # (P, 6, 3)
    # Inclusive by a hair, so pixel centres on a shared edge go to both triangles (the
    # z-buffer picks one) rather than to neither.
    bound = (-1e-6 - (p[:, 1] * y[:, None] + p[:, 2])) / p[:, 0]
    lower = (bound - p[:, 3]).amax(1)
    upper = (bound + p[:, 4]).amin(1)
    jl = torch.ceil(lower - 0.5).clamp_min(0)
    jr = torch.floor(upper - 0.5).clamp_max(width - 1)
    span = (jr - jl + 1).clamp_min(0).long()
    pair = torch.repeat_interleave(torch.arange(span.shape[0], device=device), span)
    start = torch.cumsum(span, 0) - span
    px = jl.long().index_select(0, pair) + (torch.arange(pair.shape[0], device=device) - start.index_select(0, pair))
    depth_plane = p[:, 5].index_select(0, pair)  # (N, 3)
    inv_depth = depth_plane[:, 0] * (px.to(planes.dtype) + 0.5) + depth_plane[:, 1] * y.index_select(0, pair) + depth_plane[:, 2]
    return tri.index_select(0, pair), px, py.index_select(0, pair), inv_depth


@torch.no_grad()
def _visible_triangles(
    screen: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False
) -> tuple[Tensor, Tensor]:
    """Z-buffer pass: (pixel_index, triangle) for every covered pixel, nearest triangle wins."""
    batch = screen.shape[0]
    num_faces = faces.shape[0]
    device = screen.device
    offsets = (torch.arange(batch, device=device) * screen.shape[1])[:, None, None]
    tri = screen.reshape(-1, 3).index_select(0, (faces[None] + offsets).reshape(-1)).reshape(batch * num_faces, 3, 3)
    x, y, z = tri.unbind(-1)
    area2 = _signed_area2(x, y)

    # Pixel centres j + 0.5 inside [min, max] give j in [ceil(min - 0.5), floor(max - 0.5)].
    j0 = torch.ceil(x.amin(-1) - 0.5).clamp(0, width)
    j1 = torch.floor(x.amax(-1) - 0.5).clamp(-1, width - 1)
    i0 = torch.ceil(y.amin(-1) - 0.5).clamp(0, height)
    i1 = torch.floor(y.amax(-1) - 0.5).clamp(-1, height - 1)
    valid = (z.amin(-1) > _NEAR) & (area2.abs() > 1e-12) & (j1 >= j0) & (i1 >= i0)
    if cull_backfaces:
        valid &= area2 < 0  # counter-clockwise seen from outside is clockwise in y-down pixels
    keep = torch.nonzero(valid).squeeze(1)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if keep.numel() == 0:
        return empty, empty
    x, y, z = tri.index_select(0, keep).unbind(-1)
    planes = _edge_planes(x, y, z, area2.index_select(0, keep))
    i0 = i0.index_select(0, keep).long()
    bh = (i1.index_select(0, keep) + 1).long() - i0
    # Each kept triangle's flat pixel offset of its image and its index in `faces`.
    image_base = (keep // num_faces) * (height * width)
    face_id = keep % num_faces

    row, px, py, inv_depth = _covered_spans(planes, i0, bh, width)
    pixel = image_base.index_select(0, row) + py * width + px
    triangle = face_id.index_select(0, row)
    # The z-buffer test and the choice of triangle in one scatter: for positive floats the bit
    # pattern orders like the value, so (bits of 1/depth, triangle) packed into one int64
    # compares nearest first, and ties (a shared edge at equal depth) go to the larger
    # triangle index, deterministically. 1/depth > 0 holds: every kept triangle is in front.
    bits = inv_depth.to(torch.float32).view(torch.int32).to(torch.int64)
    key = (bits << 32) | triangle
    owner = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
    owner.scatter_reduce_(0, pixel, key, reduce="amax")
    pixel_index = torch.nonzero(owner >= 0).squeeze(1)
    return pixel_index, owner.index_select(0, pixel_index) & 0xFFFFFFFF


def rasterize(
    screen: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    cull_backfaces: bool = False,
    attributes: Tensor | None = None,
    corner_attributes: Tensor | None = None,
) -> Fragments:
    """Rasterise projected vertices (B, V, 3: pixel x, pixel y, depth) with triangles (F, 3).

    ``cull_backfaces`` skips triangles wound clockwise on screen (seen from behind when the
    mesh is wound counter-clockwise outward); it halves the work on closed meshes.

    ``attributes`` (B, V, C), indexed by ``faces``, and ``corner_attributes`` (F, 3, D), given
    per triangle corner (UVs with their own indexing, say), are interpolated in the same pass
    into ``Fragments.attributes`` (N, C + D): one gather of whole triangles per pixel is much
    cheaper than one gather per attribute.
    """
    pixel_index, triangle = _visible_triangles(screen, faces, height, width, cull_backfaces)
    batch, num_vertices = screen.shape[:2]
    batch_index = pixel_index // (height * width)
    rest = pixel_index % (height * width)
    cx = (rest % width).to(screen.dtype) + 0.5
    cy = (rest // width).to(screen.dtype) + 0.5

    # Per-triangle table (B*F, 3 corners, 3 + C + D), then one row per pixel (differentiable).
    per_vertex = screen if attributes is None else torch.cat([screen, attributes.to(screen.dtype)], -1)
    channels = per_vertex.shape[-1]
    vertex_ids = (faces[None] + (torch.arange(batch, device=faces.device) * num_vertices)[:, None, None]).reshape(-1)
    table = per_vertex.reshape(-1, channels).index_select(0, vertex_ids).reshape(batch * faces.shape[0], 3, channels)
    rows = table.reshape(table.shape[0], -1).index_select(0, triangle + batch_index * faces.shape[0])
    corners = rows.reshape(-1, 3, channels)
    # split rather than indexing: its backward is one cat, where each indexed view would
    # backpropagate through a zero-filled copy of the whole table.
    x, y, z, attrs = corners.split([1, 1, 1, channels - 3], dim=-1)
    x, y, z = x.squeeze(-1), y.squeeze(-1), z.squeeze(-1)
    # Edge function of the edge opposite each corner k, for all three corners at once.
    px, py = x.roll(-1, dims=1), y.roll(-1, dims=1)
    screen_bary = (x.roll(-2, dims=1) - px) * (cy[:, None] - py) - (y.roll(-2, dims=1) - py) * (cx[:, None] - px)
    # Perspective-correct barycentrics: screen-space weights over z, renormalised (the common
    # factor of the screen-space normalisation cancels).
    persp = screen_bary / z
    inv_depth = persp.sum(-1, keepdim=True)
    bary = persp / inv_depth
    parts = []
    if channels > 3:
        parts.append(interpolate_corners(bary, attrs))
    if corner_attributes is not None:
        # Constant per-corner data (UVs): gathered apart, so no gradient buffer is made for it.
        extra = corner_attributes.reshape(corner_attributes.shape[0], -1).index_select(0, triangle)
        parts.append(interpolate_corners(bary, extra.reshape(-1, 3, corner_attributes.shape[-1])))
    interpolated = (torch.cat(parts, -1) if len(parts) > 1 else parts[0]) if parts else None
    depth = (screen_bary.sum(-1, keepdim=True) / inv_depth).squeeze(-1)
    return Fragments(
        pixel_index=pixel_index,
        triangle=triangle,
        batch=batch_index,
        bary=bary,
        depth=depth,
        batch_size=batch,
        height=height,
        width=width,
        attributes=interpolated,
    )
