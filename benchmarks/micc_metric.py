"""The MICC shape-error protocol (Tran et al. 2017, Genova et al. 2018, paper 5.3.1), bpy- and
torch-free so that the benchmark and its test share one implementation.

1. Crop the ground truth to a sphere of ``radius_mm`` (95 mm) around its nose tip.
2. Align the prediction to the crop by ICP: nearest-point correspondences both ways on densely
   sampled surfaces, a linearised point-to-plane step per iteration, optionally with one global
   scale (the protocol allows it for single-image methods, whose absolute size is unknown).
3. Report the symmetric point-to-plane distance: the mean over both directions of
   |n . (p - q)| from each point to its nearest point on the other surface, n that point's
   surface normal; the prediction is cropped by the same sphere after alignment.

All lengths are in the units of the input (the benchmark passes millimetres).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

#: |residual| below which ICP's reweighting stops growing (mm-scale inputs): keeps weights finite.
IRLS_FLOOR = 0.05


@dataclass(frozen=True)
class MiccSettings:
    """Protocol constants; the defaults are the published protocol's."""

    radius_mm: float = 95.0  # crop radius around the ground truth's nose tip
    allow_scale: bool = True  # ICP solves one global scale (Genova et al. 2018)
    samples_per_mm2: float = 0.5  # surface sampling density (points about 1.4 mm apart)
    max_iterations: int = 60
    tolerance: float = 1e-4  # stop when the update's rotation/scale/translation change is smaller
    seed: int = 0  # surface sampling is random but fixed


@dataclass
class Alignment:
    """``aligned = scale * points @ rotation.T + translation``."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    iterations: int = 0

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * points @ self.rotation.T + self.translation

    def then(self, other: "Alignment") -> "Alignment":
        """This alignment followed by ``other``."""
        return Alignment(other.rotation @ self.rotation, other.apply(self.translation),
                         other.scale * self.scale, self.iterations + other.iterations)


@dataclass(frozen=True)
class Surface:
    """Points sampled on a triangle mesh with the normal of the triangle each lies on."""

    points: np.ndarray  # (N, 3)
    normals: np.ndarray  # (N, 3) unit

    def transformed(self, alignment: Alignment) -> "Surface":
        return Surface(alignment.apply(self.points), self.normals @ alignment.rotation.T)

    def within(self, centre: np.ndarray, radius: float) -> "Surface":
        keep = np.linalg.norm(self.points - centre, axis=1) <= radius
        return Surface(self.points[keep], self.normals[keep])


@dataclass(frozen=True)
class ShapeError:
    """One head's figures (input units)."""

    symmetric: float  # the protocol's number: mean of the two directions
    pred_to_gt: float
    gt_to_pred: float
    scale: float  # the global scale ICP applied to the prediction (1 when not allowed)
    iterations: int


def crop_faces(vertices: np.ndarray, faces: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Triangles whose three corners lie within ``radius`` of ``centre`` (the protocol's crop)."""
    inside = np.linalg.norm(vertices - centre, axis=1) <= radius
    return faces[inside[faces].all(axis=1)]


def sample_surface(vertices: np.ndarray, faces: np.ndarray, density: float, seed: int = 0) -> Surface:
    """Area-weighted uniform samples (``density`` per unit area, at least one per triangle's
    worth) so the distance does not depend on how finely either mesh is triangulated."""
    if len(faces) == 0:
        raise ValueError("no triangles to sample: the crop is empty (is the nose tip on the mesh?)")
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    cross = np.cross(b - a, c - a)
    doubled = np.linalg.norm(cross, axis=1)
    area = 0.5 * doubled
    keep = doubled > 0
    a, b, c, cross, doubled, area = a[keep], b[keep], c[keep], cross[keep], doubled[keep], area[keep]
    count = max(len(area), int(round(area.sum() * density)))
    rng = np.random.default_rng(seed)
    which = rng.choice(len(area), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    points = a[which] + u[:, None] * (b[which] - a[which]) + v[:, None] * (c[which] - a[which])
    return Surface(points, cross[which] / doubled[which, None])


def plane_step(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], centre: np.ndarray,
               allow_scale: bool) -> Alignment:
    """One linearised point-to-plane step (Chen and Medioni 1992, with a scale term): the small
    rotation w, translation t and scale change d minimising the mean of |n . ((1 + d) p + w x p
    + t - q)| over each set of (moving points p, fixed points q, normals n), the sets weighted
    equally: the metric itself, by one reweighted least-squares pass (weights 1 / |residual|).
    Coordinates are taken about ``centre`` for conditioning. Converges in far fewer iterations
    than point-to-point steps, which crawl when the surfaces slide along each other."""
    rows, rhs = [], []
    for moving, fixed, normals in pairs:
        p, q = moving - centre, fixed - centre
        columns = [np.cross(p, normals), normals]
        if allow_scale:
            columns.append(np.einsum("ij,ij->i", normals, p)[:, None])
        residual = np.einsum("ij,ij->i", normals, q - p)
        weight = np.sqrt(1.0 / (np.maximum(np.abs(residual), IRLS_FLOOR) * len(p)))
        rows.append(np.column_stack(columns) * weight[:, None])
        rhs.append(residual * weight)
    x = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
    w, t = x[:3], x[3:6]
    angle = float(np.linalg.norm(w))
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / max(angle, 1e-12)
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    scale = 1.0 + float(x[6]) if allow_scale else 1.0
    # about the centre: x -> scale R (x - c) + c + t
    return Alignment(rotation, centre + t - scale * rotation @ centre, scale)


def icp(source: Surface, target: Surface, target_tree: cKDTree, centre: np.ndarray, settings: MiccSettings,
        start: Alignment | None = None) -> Alignment:
    """Align ``source`` to ``target`` (already cropped around ``centre``) by symmetric
    point-to-plane ICP: each iteration pairs the source points inside the crop sphere with
    their nearest target points (target normals) and every target point with its nearest
    source point (source normals), the two directions the metric averages, and minimises the
    metric itself (see ``plane_step``). One direction alone lets a free scale shrink the
    prediction into the crop; squared residuals let a few far points (ears, the crop's rim)
    decide the scale."""
    current = start or Alignment()
    for iteration in range(1, settings.max_iterations + 1):
        moved = source.transformed(current).within(centre, settings.radius_mm)
        if len(moved.points) < 10:
            raise ValueError("fewer than 10 predicted points inside the crop: the prediction is not near the ground truth")
        _, nearest = target_tree.query(moved.points)
        _, nearest_source = cKDTree(moved.points).query(target.points)
        step = plane_step([(moved.points, target.points[nearest], target.normals[nearest]),
                           (moved.points[nearest_source], target.points, moved.normals[nearest_source])],
                          centre, settings.allow_scale)
        current = current.then(step)
        current.iterations = iteration
        change = (np.abs(step.rotation - np.eye(3)).max() + abs(step.scale - 1)
                  + np.abs(step.translation + step.scale * step.rotation @ centre - centre).max() / settings.radius_mm)
        if change < settings.tolerance:
            break
    return current


def point_to_plane(points: np.ndarray, target: Surface, tree: cKDTree) -> np.ndarray:
    """|n . (p - q)| with q the nearest target sample to each point p and n its normal."""
    _, nearest = tree.query(points)
    return np.abs(np.einsum("ij,ij->i", points - target.points[nearest], target.normals[nearest]))


def shape_error(pred_vertices: np.ndarray, pred_faces: np.ndarray, gt_vertices: np.ndarray, gt_faces: np.ndarray,
                gt_nose_tip: np.ndarray, pred_nose_tip: np.ndarray | None = None,
                settings: MiccSettings = MiccSettings()) -> tuple[ShapeError, Alignment]:
    """The protocol on one head: crop, ICP, symmetric point-to-plane distance.

    ICP starts from the translation that puts ``pred_nose_tip`` (default: the prediction's
    centroid mapped to the crop's centroid) on the ground truth's nose tip; both meshes are
    expected in the same orientation convention, as they are here (the engine's model space)."""
    gt_nose_tip = np.asarray(gt_nose_tip, dtype=np.float64)
    cropped = crop_faces(gt_vertices, gt_faces, gt_nose_tip, settings.radius_mm)
    gt = sample_surface(gt_vertices, cropped, settings.samples_per_mm2, settings.seed)
    pred = sample_surface(pred_vertices, pred_faces, settings.samples_per_mm2, settings.seed + 1)
    anchor = gt_nose_tip if pred_nose_tip is not None else gt.points.mean(0)
    origin = np.asarray(pred_nose_tip, dtype=np.float64) if pred_nose_tip is not None else pred.points.mean(0)
    start = Alignment(translation=anchor - origin)
    gt_tree = cKDTree(gt.points)
    alignment = icp(pred, gt, gt_tree, gt_nose_tip, settings, start)
    aligned = pred.transformed(alignment).within(gt_nose_tip, settings.radius_mm)
    pred_to_gt = float(point_to_plane(aligned.points, gt, gt_tree).mean())
    gt_to_pred = float(point_to_plane(gt.points, aligned, cKDTree(aligned.points)).mean())
    error = ShapeError(0.5 * (pred_to_gt + gt_to_pred), pred_to_gt, gt_to_pred, alignment.scale, alignment.iterations)
    return error, alignment
