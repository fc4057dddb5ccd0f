"""The interim texture model: the photo projected into UV space (until the GAN prior exists).

Each texel is a point on the fitted mesh. Where that point is visible in the photo (z-buffer test
plus a facing weight) it takes the photo's colour; where it is hidden it takes the colour of its
mirror point on the other half of the face, if that one is visible; what neither reaches is
filled from its surroundings by push-pull. Dividing by the fitted shading turns the photo's
colour into an albedo estimate, so the lit render reproduces the photo instead of shading twice.

Outside the face's outline (ears, temples, scalp, neck) the model's surface often lands on
something that is not the person's skin: background, hair, a hat, a collar (the head model is
bald, and its ears rarely sit exactly over the photo's). Given the photo's outline, texels there
keep the photo's colour only as far as it looks like the skin inside the outline, and are
filled from their surroundings otherwise (``skin_only_outside``): no sky-blue ears. Opt-in
(``AppearanceStageSettings.skin_only_outside_face``, ``--clean-texture``): dlib finds such
renders a little less like the photo (docs/fitting.md).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..face.detection import FACE_OUTLINE
from ..render import Camera, Fragments, PointLight, interpolate, rasterize, vertex_normals
from ..render.shading import linear_to_srgb, srgb_to_linear

log = logging.getLogger(__name__)

#: ``skin_outline``: how far the jaw points move toward the face's centre, and the brows up
#: (fractions of the distances to the centre and of the brow-to-chin height).
JAW_PULL = 0.1
BROW_RAISE = 0.1


@dataclass(frozen=True)
class UVTexture:
    """A texture in UV space with how much of each texel the photo really saw."""

    image: Tensor  # (3, S, S) in [0, 1], row 0 is v = 1
    confidence: Tensor  # (1, S, S) in [0, 1]: 1 seen directly, 0 filled


def uv_fragments(uvs: Tensor, uv_faces: Tensor, size: int) -> Fragments:
    """Which triangle and barycentrics cover each texel centre of a size x size UV map."""
    screen = torch.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size, torch.ones_like(uvs[:, 0])], -1)
    return rasterize(screen[None], uv_faces, size, size, cull_backfaces=False)


@dataclass(frozen=True)
class UVTexels:
    """The covered texels of a size x size UV map, with the sparse (N texels x V vertices) matrix
    of barycentric weights that interpolates per-vertex values at them. It depends on the mesh's
    UV layout only, so it is built once per size: one sparse product then interpolates every
    attribute at every texel, 15 times faster than gathering the corners of 217,000 texels for
    each attribute (measured at 512 px on one core)."""

    fragments: Fragments
    weights: Tensor  # sparse CSR (N, V)

    def interpolate(self, values: Tensor) -> Tensor:
        """(N, C) per-texel values of per-vertex ``values`` (V, C)."""
        return self.weights @ values


def uv_texels(uvs: Tensor, uv_faces: Tensor, faces: Tensor, num_vertices: int, size: int) -> UVTexels:
    """``UVTexels`` for a mesh whose UV triangles ``uv_faces`` are its 3D triangles ``faces``."""
    fragments = uv_fragments(uvs, uv_faces, size)
    corners = faces[fragments.triangle]  # (N, 3) vertex indices
    count = corners.shape[0]
    rows = torch.arange(count, device=corners.device).repeat_interleave(3)
    indices = torch.stack([rows, corners.reshape(-1)])
    bary = fragments.bary.detach().reshape(-1)
    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"; it is exact here
        warnings.simplefilter("ignore", UserWarning)
        weights = torch.sparse_coo_tensor(indices, bary, (count, num_vertices)).coalesce().to_sparse_csr()
    return UVTexels(fragments, weights)




def mirror_vertex_index(vertices: Tensor, chunk: int = 2048) -> Tensor:
    """For each vertex of a left/right symmetric mesh (mirror plane x = 0), its mirror vertex."""
    mirrored = vertices * torch.tensor([-1.0, 1.0, 1.0], dtype=vertices.dtype, device=vertices.device)
    out = []
    for start in range(0, vertices.shape[0], chunk):
        d = torch.cdist(mirrored[start : start + chunk], vertices)
        out.append(d.argmin(-1))
    return torch.cat(out)


def push_pull_fill(image: Tensor, weight: Tensor) -> Tensor:
    """Fill low-weight pixels of (C, H, W) from a weighted image pyramid (smooth, no seams).

    The weighted image and its weight are pooled together (one 4-channel tensor) and the
    blend is done in place: the same numbers, a fifth faster at 512 px."""
    channels = image.shape[0]
    levels = []
    both = torch.cat([image * weight, weight])
    while min(both.shape[-2:]) > 1:
        levels.append(both)
        both = F.avg_pool2d(both[None], 2, ceil_mode=True)[0]
    coarse = both[:channels] / both[channels:].clamp_min(1e-8)
    for both in reversed(levels):
        img, w = both[:channels], both[channels:]
        up = F.interpolate(coarse[None], size=img.shape[-2:], mode="bilinear", align_corners=False)[0]
        alpha = w.clamp(0, 1)
        # norm * alpha + up * (1 - alpha), with norm = img / w
        coarse = (img / w.clamp_min(1e-8)).mul_(alpha).add_(up.mul_(1 - alpha))
    # in the image's own memory layout: the UV scatter's is channels last, which the texture's
    # conversion to an (H, W, 3) picture and the preview render read 5x faster
    return torch.empty_like(image).copy_(coarse)


def shading(position: Tensor, normal: Tensor, light: PointLight, normal_length: Tensor | None = None) -> Tensor:
    """Diffuse Phong shading (N, 3) of points, as the renderer computes it (batch 0);
    ``normal_length``: the normals' lengths (N,) when the caller has them already."""
    if normal_length is None:
        normal_length = normal.norm(dim=-1)
    n = normal / normal_length[:, None].clamp_min(1e-12)
    to_light = light.position[0] - position
    l_dir = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return light.ambient[0] + light.colour[0] * (n * l_dir).sum(-1, keepdim=True).clamp_min(0.0)


def _sample_photo(photo: Tensor, xy: Tensor) -> Tensor:
    """Bilinear photo colour (N, 3) at pixel coordinates xy (N, 2)."""
    _, h, w = photo.shape
    grid = torch.stack([xy[:, 0] / w * 2 - 1, xy[:, 1] / h * 2 - 1], -1)
    return F.grid_sample(photo[None], grid[None, None], mode="bilinear", align_corners=False)[0, :, 0].T


def _sample_map(image: Tensor, xy: Tensor) -> Tensor:
    """Bilinear values (N,) of a (H, W) map at pixel positions (N, 2); 0 outside."""
    h, w = image.shape
    grid = torch.stack([xy[:, 0] / w * 2 - 1, xy[:, 1] / h * 2 - 1], -1)
    return F.grid_sample(image[None, None], grid[None, None], mode="bilinear", align_corners=False)[0, 0, 0]


def _observe(
    photo: Tensor, depth_map: Tensor, camera: Camera, points: Tensor, normals: Tensor, light: PointLight | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Colour (albedo if a light is given), weight (N,) and photo position (N, 2) of surface
    points seen in the photo.

    Points the photo does not see get weight 0 and colour 0: every use of a colour is scaled by
    its weight. Only a third of a 512 px texture's texels are seen, so the facing weight is
    computed for the points in view only and the colour for those with weight only (the same
    numbers for them; 2.5x faster)."""
    _, h, w = photo.shape
    screen = camera.project(points[None], w, h)[0]
    x, y, z = screen.unbind(-1)
    xy = torch.stack([x, y], -1)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & (z > 0)
    px = x.long().clamp_(0, w - 1)
    py = y.long().clamp_(0, h - 1)
    surface = depth_map.reshape(-1).index_select(0, py.mul_(w).add_(px))  # depth_map[py, px], 2x faster
    visible = (inside & (surface > 0) & (z <= surface * 1.005 + 1e-4)).nonzero()[:, 0]
    # (index_select: indexing a strided view with [] is 3x slower)
    seen_points, seen_normals = points.index_select(0, visible), normals.index_select(0, visible)
    to_eye = camera.position[0] - seen_points
    normal_length = seen_normals.norm(dim=-1)
    facing = (seen_normals * to_eye).sum(-1) / (normal_length * to_eye.norm(dim=-1)).clamp_min(1e-12)
    # Grazing views smear the photo across the texture: fade them out between 0.1 and 0.5.
    weight = ((facing - 0.1) / 0.4).clamp(0, 1)
    weight = weight * weight * (3 - 2 * weight)
    lit = (weight > 0).nonzero()[:, 0]
    used, weight_used = visible[lit], weight[lit]
    colour = _sample_photo(photo, xy.index_select(0, used))
    if light is not None:  # the renderer's image formation inverted: decode, divide in linear light, encode
        shade = shading(seen_points.index_select(0, lit), seen_normals.index_select(0, lit), light,
                        normal_length.index_select(0, lit)).clamp_min(0.05)
        colour = linear_to_srgb(srgb_to_linear(colour) / shade)
    colours = points.new_zeros(points.shape[0], photo.shape[0]).index_copy_(0, used, colour.clamp(0, 1))
    weights = points.new_zeros(points.shape[0]).index_copy_(0, used, weight_used)
    return colours, weights, xy


def inside_outline(xy: Tensor, outline: Tensor, feather: float) -> Tensor:
    """(N,) 1 for points (N, 2) inside the closed polygon ``outline`` (K, 2), falling linearly to
    0 at ``feather`` pixels outside it."""
    a, b = outline, outline.roll(-1, 0)  # edges a -> b
    # Even-odd rule: count the edges a ray to +x crosses.
    ya, yb = a[:, 1][None], b[:, 1][None]
    y = xy[:, 1:2]
    spans = (ya > y) != (yb > y)
    cross_x = a[:, 0][None] + (y - ya) / (yb - ya).where(spans, torch.ones_like(yb)) * (b[:, 0] - a[:, 0])[None]
    inside = ((spans & (xy[:, 0:1] < cross_x)).sum(-1) % 2) == 1
    # Distance to the nearest edge.
    edge = b - a
    t = (((xy[:, None, :] - a[None]) * edge[None]).sum(-1) / (edge**2).sum(-1).clamp_min(1e-12)[None]).clamp(0, 1)
    distance = (xy[:, None, :] - (a[None] + t[..., None] * edge[None])).norm(dim=-1).min(-1).values
    outside = (1 - distance / max(feather, 1e-6)).clamp(0, 1)
    return torch.where(inside, torch.ones_like(outside), outside)


def outline_weight(xy: Tensor, outline: Tensor, feather: float) -> Tensor:
    """``inside_outline`` for many points (N, 2) at a cost independent of N: evaluated exactly on
    a grid over the outline's box (spacing feather / 4) and interpolated. A 2048 px texture has
    ~3 million texels; the exact test on each against every edge took seconds and gigabytes."""
    feather = max(feather, 1e-3)
    step = feather / 4
    lo = outline.min(0).values - feather
    counts = ((outline.max(0).values + feather - lo) / step).ceil().long() + 1
    nx, ny = int(counts[0]), int(counts[1])
    gx = lo[0] + step * torch.arange(nx, dtype=xy.dtype, device=xy.device)
    gy = lo[1] + step * torch.arange(ny, dtype=xy.dtype, device=xy.device)
    points = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).reshape(-1, 2)
    grid = inside_outline(points, outline, feather).reshape(1, 1, ny, nx)
    span = torch.tensor([step * (nx - 1), step * (ny - 1)], dtype=xy.dtype, device=xy.device)
    where = (xy - lo) / span * 2 - 1
    return F.grid_sample(grid, where[None, None], mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0, 0]


def skin_likeness(colour: Tensor, reference: Tensor) -> Tensor:
    """(N,) in [0, 1]: how much albedo colours (N, 3) look like the skin samples ``reference``
    (M, 3). Compares chromaticity (within 1.5 robust standard deviations of the samples'
    median counts as skin, beyond 2.5 not: filling a skin texel costs little, keeping a patch of
    background shows) and brightness (within a factor 2 counts, beyond 3.5 not: dark hair has
    skin's hue but not its brightness)."""
    def chroma(c: Tensor) -> Tensor:
        return c[:, :2] / c.sum(-1, keepdim=True).clamp_min(1e-3)

    def log_lum(c: Tensor) -> Tensor:
        return c.mean(-1).clamp_min(1e-3).log()

    ref_chroma = chroma(reference)
    centre = ref_chroma.median(0).values
    spread = 1.4826 * (ref_chroma - centre).abs().median(0).values + 0.005
    distance = ((chroma(colour) - centre) / spread).norm(dim=-1)
    hue = (1 - (distance - 1.5) / 1.0).clamp(0, 1)
    brightness = (log_lum(colour) - log_lum(reference).median()).abs()
    # log 2 and log 3.5: within a factor 2 of the skin's brightness counts, beyond 3.5 not.
    bright = (1 - (brightness - 0.69) / (1.25 - 0.69)).clamp(0, 1)
    return hue * bright


@torch.no_grad()
def project_photo_to_uv(
    photo: Tensor,
    vertices: Tensor,
    faces: Tensor,
    uvs: Tensor | None,
    uv_faces: Tensor | None,
    camera: Camera,
    mirror_index: Tensor,
    size: int = 512,
    light: PointLight | None = None,
    outline: Tensor | None = None,
    texels: UVTexels | None = None,
    photo_weight: Tensor | None = None,
) -> UVTexture:
    """Project photo (3, H, W) onto the mesh (V, 3) seen by ``camera`` (batch 1) into UV space.

    With ``light``, the fitted shading is divided out, giving an albedo estimate. With
    ``outline`` (K, 2), the face's outline in photo pixels, texels seen outside it keep the photo
    only where it looks like the skin inside it (see the module docstring). ``texels``: this
    size's ``uv_texels``, which depend on the mesh's UV layout only, so a caller projecting
    many photos builds them once (``uvs`` and ``uv_faces`` are then not needed). With
    ``photo_weight`` (H, W) in [0, 1], every observation's weight is scaled by it at its photo
    position (``texture.blend``: the skin segmentation), so the confidence is the photo weight
    and a texel whose own view the map rules out takes its mirror's colour.
    """
    _, h, w = photo.shape
    frags = rasterize(camera.project(vertices[None], w, h), faces, h, w, cull_backfaces=True)
    depth_map = frags.scatter(frags.depth[:, None])[0, 0]

    if texels is None:
        if uvs is None or uv_faces is None:
            raise ValueError("project_photo_to_uv needs uvs and uv_faces, or texels")
        sampler = uv_texels(uvs, uv_faces, faces, vertices.shape[0], size)
    else:
        sampler = texels
    weight_map = None if photo_weight is None else photo_weight.to(photo)
    normals = vertex_normals(vertices[None], faces)[0]
    attributes = torch.cat([vertices, normals, vertices[mirror_index], normals[mirror_index]], -1)
    interpolated = sampler.interpolate(attributes)
    own_p, own_n, mirror_p, mirror_n = interpolated.split(3, -1)

    own_c, own_w, own_xy = _observe(photo, depth_map, camera, own_p, own_n, light)
    if weight_map is not None:
        own_w = own_w * _sample_map(weight_map, own_xy)
    if outline is not None:
        mir_c, mir_w, mir_xy = _observe(photo, depth_map, camera, mirror_p, mirror_n, light)
        if weight_map is not None:
            mir_w = mir_w * _sample_map(weight_map, mir_xy)
        own_w, mir_w = skin_only_outside(outline, own_c, own_w, own_xy, mir_c, mir_w, mir_xy)
    else:
        # A texel seen squarely (own weight 1, a fifth of them) gives its mirror no weight (the
        # product below), so the mirror is observed for the others only: the same numbers.
        partly = (own_w < 1).nonzero()[:, 0]
        # (one gather of the mirror's 6 columns: 8x faster than indexing the two strided views)
        seen_p, seen_n = interpolated[:, 6:].index_select(0, partly).split(3, -1)
        seen_c, seen_w, seen_xy = _observe(photo, depth_map, camera, seen_p, seen_n, light)
        if weight_map is not None:
            seen_w = seen_w * _sample_map(weight_map, seen_xy)
        mir_c = torch.zeros_like(own_c).index_copy_(0, partly, seen_c)
        mir_w = torch.zeros_like(own_w).index_copy_(0, partly, seen_w)
    mir_w = mir_w * (1 - own_w)
    total = own_w + mir_w
    colour = (own_c * own_w[:, None] + mir_c * mir_w[:, None]) / total.clamp_min(1e-8)[:, None]

    # one scatter for colour and confidence
    image, conf = frags_to_image(sampler.fragments, torch.cat([colour, total[:, None].clamp(0, 1)], -1), size).split(
        [colour.shape[-1], 1])
    filled = push_pull_fill(image, conf)
    coverage = float((conf > 0).float().mean())
    log.debug("UV projection: %.1f%% of texels observed", 100 * coverage)
    return UVTexture(image=filled.clamp(0, 1), confidence=conf)


def skin_outline(landmarks: np.ndarray) -> np.ndarray:
    """(27, 2) the polygon inside which ``skin_only_outside`` trusts the photo, from dlib's 68
    landmarks: the jaw (0-16) pulled ``JAW_PULL`` toward the face's centre, since dlib's jaw
    points often sit a few pixels outside the jaw, over the background (a white crescent of it
    along obama3's jaw otherwise); then the brows (26 back to 17) raised by ``BROW_RAISE`` of
    the brow-to-chin height, since the brow points run along the brows' middle and their upper
    half would otherwise be tested, found darker than skin and filled."""
    points = np.asarray(landmarks, dtype=np.float64)
    outline = points[FACE_OUTLINE]  # jaw (17 points), then brows
    centre = points.mean(0)
    outline[:17] = centre + (outline[:17] - centre) * (1 - JAW_PULL)
    outline[17:, 1] -= BROW_RAISE * float(points[8, 1] - points[17:27, 1].mean())
    return outline.astype(np.float32)


def skin_only_outside(
    outline: Tensor, own_c: Tensor, own_w: Tensor, own_xy: Tensor, mir_c: Tensor, mir_w: Tensor, mir_xy: Tensor
) -> tuple[Tensor, Tensor]:
    """The texels' weights with observations outside ``outline`` (``skin_outline``) scaled by
    their skin likeness (the reference: texels seen well inside the outline; left alone when
    there are too few)."""
    outline = outline.to(own_xy)
    feather = 0.02 * float((outline.max(0).values - outline.min(0).values).max())
    own_in = outline_weight(own_xy, outline, feather)
    reference = own_c[(own_in > 0.999) & (own_w > 0.5)]
    if reference.shape[0] < 100:
        log.debug("UV projection: %d skin samples inside the outline; nothing masked", reference.shape[0])
        return own_w, mir_w
    mir_in = outline_weight(mir_xy, outline, feather)
    # One call for both, so the reference's medians are taken once.
    own_skin, mir_skin = skin_likeness(torch.cat([own_c, mir_c]), reference).split([len(own_c), len(mir_c)])
    own_w = own_w * (own_in + (1 - own_in) * own_skin)
    mir_w = mir_w * (mir_in + (1 - mir_in) * mir_skin)
    return own_w, mir_w


def frags_to_image(texels: Fragments, values: Tensor, size: int) -> Tensor:
    """Scatter per-texel values (N, C) into a (C, size, size) map, zero elsewhere."""
    return texels.scatter(values)[0]


def merge_textures(textures: list[UVTexture]) -> UVTexture:
    """One texture from several photos of one person (paper eq. 14 shares the texture): each
    texel is the confidence-weighted mean of the photos that saw it; texels none saw keep the
    plain mean of the filled maps."""
    if len(textures) == 1:
        return textures[0]
    images = torch.stack([t.image for t in textures])
    weights = torch.stack([t.confidence for t in textures])
    total = weights.sum(0)
    seen = (images * weights).sum(0) / total.clamp_min(1e-8)
    image = torch.where(total > 1e-4, seen, images.mean(0))
    return UVTexture(image=image, confidence=total.clamp(0, 1))
