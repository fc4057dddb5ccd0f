"""Standard 3DMMs (BFM 2017 .h5, FLAME .pkl/.npz) from small synthetic files in the real formats.

The real files need a licence and a download, so each test writes a tiny model in the same layout:
an HDF5 file with the statismo groups of BFM 2017 (points (3, N) in mm, orthonormal pcaBasis,
pcaVariance), and FLAME pickles written opcode by opcode as Python 2 wrote them (protocol 2,
``chumpy.ch.Ch`` and ``scipy.sparse.csc.csc_matrix`` objects, numpy arrays with latin-1 string
payloads). Loading must not import chumpy or scipy, and must never run code a pickle names.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from ganfit.errors import GanfitError, ModelDataError
from ganfit.models.safe_pickle import loads_restricted, to_plain_array
from ganfit.models.shape_model import DEFAULT_MODEL_FILE, ShapeModel
from ganfit.models.standard_3dmm import (
    cylindrical_uvs,
    faces_point_outward,
    load_shape_model,
    snap_embedding,
)
from ganfit.render import Camera, MeshRenderer, PointLight

RNG_SEED = 7


# ---- synthetic geometry --------------------------------------------------------------------------
def _grid_faces(rows: int, cols: int, wrap: bool = False) -> np.ndarray:
    """Two triangles per grid cell of a (rows, cols) vertex grid (columns wrap around if asked)."""
    faces = []
    ncol = cols if wrap else cols - 1
    for r in range(rows - 1):
        for c in range(ncol):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            d, e = a + cols, b + cols
            faces += [(a, b, e), (a, e, d)]
    return np.asarray(faces, dtype=np.int64)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Each triangle wound counter-clockwise seen from outside a mesh centred on the origin."""
    return np.array([tri if _tri_out(vertices, tri) else tri[[0, 2, 1]] for tri in faces])


def face_mask_mm() -> tuple[np.ndarray, np.ndarray]:
    """An open face-mask patch (12 x 12 vertices) of a 90 mm sphere facing +z, like BFM's mask."""
    az = np.radians(np.linspace(-70, 70, 12))
    el = np.radians(np.linspace(-60, 60, 12))
    e, a = np.meshgrid(el, az, indexing="ij")
    v = 90.0 * np.stack([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)], -1).reshape(-1, 3)
    return v, _outward(v, _grid_faces(12, 12))


def closed_head_m() -> tuple[np.ndarray, np.ndarray]:
    """A closed ellipsoid head (10 rings x 12 segments + 2 poles), 0.1 m across, like FLAME's."""
    rings, seg = 10, 12
    el = np.linspace(-np.pi / 2, np.pi / 2, rings + 2)[1:-1]
    az = np.linspace(-np.pi, np.pi, seg, endpoint=False)
    e, a = np.meshgrid(el, az, indexing="ij")
    body = np.stack([0.075 * np.cos(e) * np.sin(a), 0.11 * np.sin(e), 0.09 * np.cos(e) * np.cos(a)], -1)
    body = body.reshape(-1, 3)
    v = np.concatenate([body, [[0, -0.11, 0], [0, 0.11, 0]]])
    south, north = len(body), len(body) + 1
    faces = list(_grid_faces(rings, seg, wrap=True))
    faces += [(south, (c + 1) % seg, c) for c in range(seg)]
    top = (rings - 1) * seg
    faces += [(north, top + c, top + (c + 1) % seg) for c in range(seg)]
    return v, _outward(v, np.asarray(faces, dtype=np.int64))


def _tri_out(v: np.ndarray, tri: np.ndarray) -> bool:
    a, b, c = v[tri]
    return float(np.cross(b - a, c - a) @ ((a + b + c) / 3)) > 0


def landmark_json(path: Path, indices: Any) -> Path:
    path.write_text(json.dumps({"scheme": "ibug-68", "indices": [int(i) for i in indices]}))
    return path


# ---- BFM 2017 statismo .h5 -------------------------------------------------------------------------
class BFMSpec:
    """The numbers a synthetic BFM file holds, to check the loaded model against."""

    def __init__(self, reverse_winding: bool = False, ki: int = 5, ke: int = 4):
        rng = np.random.default_rng(RNG_SEED)
        self.points, faces = face_mask_mm()
        self.faces = faces[:, [0, 2, 1]] if reverse_winding else faces
        n = len(self.points)
        self.n = n
        self.mean = (self.points + rng.normal(0, 0.5, self.points.shape)).reshape(-1)  # x0 y0 z0 x1 ...
        self.basis = np.linalg.qr(rng.normal(size=(3 * n, ki)))[0]  # orthonormal, as statismo stores
        self.variance = np.array([1e4, 4e3, 1e3, 400.0, 100.0])[:ki]
        self.ex_mean = rng.normal(0, 0.2, 3 * n)
        self.ex_basis = np.linalg.qr(rng.normal(size=(3 * n, ke)))[0]
        self.ex_variance = np.array([900.0, 400.0, 100.0, 25.0])[:ke]

    def expected(self, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Vertices in metres: statismo's mean + U sqrt(var) a for shape and expression."""
        mm = (
            self.mean + self.ex_mean
            + self.basis @ (np.sqrt(self.variance) * alpha)
            + self.ex_basis @ (np.sqrt(self.ex_variance) * beta)
        )
        return mm.reshape(-1, 3) / 1000.0

    def write(self, path: Path, drop: str | None = None, edit: dict[str, np.ndarray] | None = None) -> Path:
        arrays = {
            "shape/representer/points": self.points.T.astype(np.float32),  # (3, N) mm
            "shape/representer/cells": self.faces.T.astype(np.int32),  # (3, F)
            "shape/model/mean": self.mean.astype(np.float32),
            "shape/model/pcaBasis": self.basis.astype(np.float32),
            "shape/model/pcaVariance": self.variance.astype(np.float32),
            "shape/model/noiseVariance": np.float32(1.0),
            "expression/representer/points": self.points.T.astype(np.float32),
            "expression/representer/cells": self.faces.T.astype(np.int32),
            "expression/model/mean": self.ex_mean.astype(np.float32),
            "expression/model/pcaBasis": self.ex_basis.astype(np.float32),
            "expression/model/pcaVariance": self.ex_variance.astype(np.float32),
            "color/model/mean": np.full(3 * self.n, 0.5, np.float32),
            "color/model/pcaBasis": np.zeros((3 * self.n, 2), np.float32),
            "color/model/pcaVariance": np.ones(2, np.float32),
        }
        arrays.update(edit or {})
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                if key != drop:
                    f.create_dataset(key, data=value)
            f.create_group("catalog")
            f["metadata"] = np.bytes_(b"synthetic BFM 2017 layout for tests")
        return path


@pytest.fixture(scope="module")
def bfm_spec() -> BFMSpec:
    return BFMSpec()


@pytest.fixture
def bfm_file(tmp_path: Path, bfm_spec: BFMSpec) -> Path:
    return bfm_spec.write(tmp_path / "model2017-1_synthetic.h5")


@pytest.fixture
def bfm_landmarks(tmp_path: Path, bfm_spec: BFMSpec) -> Path:
    return landmark_json(tmp_path / "bfm_landmarks.json", np.arange(30, 30 + 68))


def test_bfm_vertices_match_statismo_formula_in_metres(
    bfm_file: Path, bfm_landmarks: Path, bfm_spec: BFMSpec
) -> None:
    model = load_shape_model(bfm_file, bfm_landmarks)
    assert isinstance(model, ShapeModel)
    assert (model.num_vertices, model.num_identity, model.num_expression) == (bfm_spec.n, 5, 4)
    np.testing.assert_array_equal(model.faces.numpy(), bfm_spec.faces)  # (3, F) transposed, winding kept
    assert model.identity_std.tolist() == [1.0] * 5 and model.expression_std.tolist() == [1.0] * 4
    assert model.expression_min.tolist() == [-3.0] * 4 and model.expression_max.tolist() == [3.0] * 4
    assert model.expression_names == ["expression_000", "expression_001", "expression_002", "expression_003"]
    assert model.identity_names[0] == "identity_000"
    assert model.landmark_indices.tolist() == list(range(30, 98))
    assert model.name == "bfm:model2017-1_synthetic"
    assert model.provenance["source"] == "BFM 2017" and "color" in model.provenance["ignored"]

    rng = np.random.default_rng(1)
    alpha, beta = rng.normal(size=5), rng.normal(size=4)
    got = model.vertices(torch.tensor(alpha[None]), torch.tensor(beta[None]))[0].numpy()
    np.testing.assert_allclose(got, bfm_spec.expected(alpha, beta), atol=2e-6)
    neutral = model.vertices(*model.zero_params())[0].numpy()
    np.testing.assert_allclose(neutral, bfm_spec.expected(np.zeros(5), np.zeros(4)), atol=1e-6)
    assert 0.1 < np.ptp(neutral, axis=0).max() < 0.2  # a ~15 cm face mask: millimetres became metres
    # One unit coefficient moves the head by one prior std (BFM's sqrt(variance), 100 mm for the first).
    one = model.vertices(torch.eye(5)[:1], None)[0].numpy() - neutral
    assert np.linalg.norm(one) == pytest.approx(0.1, rel=1e-5)


def test_bfm_component_limits(bfm_file: Path, bfm_landmarks: Path) -> None:
    model = load_shape_model(bfm_file, bfm_landmarks, num_identity=2, num_expression=1)
    assert (model.num_identity, model.num_expression) == (2, 1)


def test_bfm_fallback_uvs_cover_the_unit_square_without_seams(bfm_file: Path, bfm_landmarks: Path) -> None:
    model = load_shape_model(bfm_file, bfm_landmarks)
    uvs, uv_faces = model.uvs.numpy(), model.uv_faces.numpy()
    assert uvs.shape == (model.num_vertices, 2)  # an open mask: no seam copies
    assert uvs.min() == pytest.approx(0.0) and uvs.max() == pytest.approx(1.0)
    assert np.ptp(uvs[uv_faces][..., 0], axis=1).max() < 0.2
    assert "cylindrical" in model.provenance["uvs"]
    # u runs from the subject's right (-x) to left (+x) across the face, v up.
    mean = model.mean.numpy()
    assert np.corrcoef(mean[:, 0], uvs[:, 0])[0, 1] > 0.95 and np.corrcoef(mean[:, 1], uvs[:, 1])[0, 1] > 0.95


def _render_mask(model: ShapeModel, distance: float) -> torch.Tensor:
    """Front view of the model with back-face culling (as in fitting); checked against no culling."""
    identity, expression = model.zero_params()
    identity[0, 0] = 1.0
    verts = model.vertices(identity, expression)
    centre = verts[0].mean(0)
    camera = Camera(
        position=(centre + torch.tensor([0.0, 0.0, distance]))[None],
        look_at=centre[None],
        up=torch.tensor([[0.0, 1.0, 0.0]]),
        focal=torch.tensor([1.0]),
    )
    light = PointLight(torch.tensor([[0.3, 0.5, 1.0]]), torch.ones(1, 3), torch.full((1, 3), 0.2))
    texture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = []
    for cull in (True, False):
        renderer = MeshRenderer(model.faces, model.uvs, model.uv_faces, cull_backfaces=cull)
        out = renderer(verts, texture, camera, light, 48, 48)
        assert torch.isfinite(out.image).all() and out.image.abs().sum() > 0
        masks.append(out.mask)
    # Faces wound outward: culling removes nothing that the camera sees.
    assert torch.equal(masks[0], masks[1])
    return masks[0]


@pytest.mark.parametrize("reverse", [False, True])
def test_bfm_renders_with_culling_whatever_the_file_winding(tmp_path: Path, reverse: bool) -> None:
    spec = BFMSpec(reverse_winding=reverse)
    model = load_shape_model(spec.write(tmp_path / "bfm.h5"), require_landmarks=False)
    assert model.provenance["faces_reversed"] is reverse
    assert model.landmark_indices.numel() == 0
    mask = _render_mask(model, 0.3)
    assert mask.sum() > 200  # the face fills a good part of the view from the front


@pytest.mark.parametrize(
    ("drop", "edit", "message"),
    [
        ("shape/model/pcaBasis", None, "lacks shape/model/pcaBasis"),
        ("shape/representer/cells", None, "lacks the dataset shape/representer/cells"),
        (None, {"shape/model/mean": np.zeros(10, np.float32)}, "shape/model/mean of shape (10,)"),
        (None, {"shape/representer/points": np.zeros((4, 5), np.float32)}, "expected (3, N)"),
        (None, {"shape/model/pcaVariance": np.array([1.0, -1, 1, 1, 1], np.float32)}, "negative values"),
        (None, {"expression/model/pcaVariance": np.ones(3, np.float32)}, "pcaVariance of shape (3,), expected (4,)"),
        (None, {"shape/representer/cells": np.full((3, 4), 9999, np.int32)}, "triangles indexing vertex 9999"),
    ],
)
def test_bfm_bad_files_say_what_is_wrong(
    tmp_path: Path, bfm_spec: BFMSpec, drop: str | None, edit: dict | None, message: str
) -> None:
    path = bfm_spec.write(tmp_path / "bad.h5", drop=drop, edit=edit)
    with pytest.raises(ModelDataError) as info:
        load_shape_model(path, require_landmarks=False)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    assert "docs/shape-models.md" in text


def test_bfm_nan_is_refused(tmp_path: Path, bfm_spec: BFMSpec) -> None:
    basis = bfm_spec.basis.astype(np.float32)
    basis[3, 1] = np.nan
    path = bfm_spec.write(tmp_path / "nan.h5", edit={"shape/model/pcaBasis": basis})
    with pytest.raises(ModelDataError, match="NaN or infinite values in shape/model"):
        load_shape_model(path, require_landmarks=False)


def test_bfm_truncated_and_foreign_bytes(tmp_path: Path, bfm_file: Path) -> None:
    data = bfm_file.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDataError, match="not a readable HDF5 model") as info:
        load_shape_model(truncated, require_landmarks=False)
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelDataError, match="neither HDF5"):
        load_shape_model(garbage)
    with pytest.raises(ModelDataError, match="does not exist"):
        load_shape_model(tmp_path / "missing.h5")


def test_bfm_without_landmarks_says_what_to_pass(bfm_file: Path) -> None:
    with pytest.raises(GanfitError) as info:
        load_shape_model(bfm_file)
    text = str(info.value)
    assert "--landmarks" in text and "68" in text and "\n" not in text


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (list(range(60)), "has 60 landmarks, not 68"),
        (list(range(67)) + [10_000], "indexes vertex 10000"),
        (list(range(67)) + [0], "repeats vertex indices"),
    ],
)
def test_bad_landmark_json(tmp_path: Path, bfm_file: Path, indices: list[int], message: str) -> None:
    with pytest.raises(ModelDataError, match=message):
        load_shape_model(bfm_file, landmark_json(tmp_path / "lm.json", indices))


def test_landmark_json_malformed(tmp_path: Path, bfm_file: Path) -> None:
    bad = tmp_path / "lm.json"
    bad.write_text('{"points": [1, 2]}')
    with pytest.raises(ModelDataError, match="integer list 'indices'"):
        load_shape_model(bfm_file, bad)
    bad.write_text('{"indices": [1.5, 2]}')
    with pytest.raises(ModelDataError, match="flat list of integers"):
        load_shape_model(bfm_file, bad)
    with pytest.raises(ModelDataError, match="does not exist"):
        load_shape_model(bfm_file, tmp_path / "nope.json")


# ---- Python 2 pickles, written opcode by opcode ------------------------------------------------------
class Ch:
    """Stands for a pickled ``chumpy.ch.Ch`` (protocol 2: NEWOBJ, then its ``__dict__`` via BUILD)."""

    def __init__(self, x: np.ndarray):
        self.x = x


class Csc:
    """Stands for a pickled ``scipy.sparse.csc.csc_matrix`` built from a dense matrix."""

    def __init__(self, dense: np.ndarray):
        self.dense = dense
        cols = [np.nonzero(dense[:, j])[0] for j in range(dense.shape[1])]
        self.indices = np.concatenate(cols).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
        self.data = np.concatenate([dense[c, j] for j, c in enumerate(cols)])


class Raw:
    """Raw pickle bytes spliced into the stream (for hostile payloads)."""

    def __init__(self, data: bytes):
        self.data = data


def _py2_str(s: str | bytes) -> bytes:
    b = s.encode("latin-1") if isinstance(s, str) else s
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_dtype(dt: np.dtype) -> bytes:
    order = "|" if dt.itemsize == 1 else "<"
    state = (3, order, None, None, None, -1, -1, 0)
    return b"cnumpy\ndtype\n" + py2_pickle_body((dt.str[1:], 0, 1)) + b"R" + py2_pickle_body(state) + b"b"


def py2_pickle_body(obj: Any) -> bytes:
    """Protocol-2 opcodes for ``obj`` as Python 2 (cPickle) with numpy 1.x and chumpy wrote them."""
    if isinstance(obj, Raw):
        return obj.data
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, (str, bytes)):
        return _py2_str(obj)
    if isinstance(obj, tuple):
        inner = b"".join(py2_pickle_body(x) for x in obj)
        short = {0: b")", 1: inner + b"\x85", 2: inner + b"\x86", 3: inner + b"\x87"}
        return short.get(len(obj), b"(" + inner + b"t")
    if isinstance(obj, list):
        return b"](" + b"".join(py2_pickle_body(x) for x in obj) + b"e" if obj else b"]"
    if isinstance(obj, set):
        return b"c__builtin__\nset\n" + py2_pickle_body((sorted(obj),)) + b"R"
    if isinstance(obj, dict):
        items = b"".join(py2_pickle_body(k) + py2_pickle_body(v) for k, v in obj.items())
        return b"}(" + items + b"u" if obj else b"}"
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        # _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype, fortran, raw bytes as a str).
        head = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + py2_pickle_body((0,))
        head += _py2_str("b") + b"tR"
        state = b"(K\x01" + py2_pickle_body(tuple(int(s) for s in arr.shape)) + _py2_dtype(arr.dtype) + b"\x89"
        state += _py2_str(arr.tobytes()) + b"t"
        return head + state + b"b"
    if isinstance(obj, Ch):
        ch_state: dict[str, Any] = {"x": obj.x, "_dirty_vars": {"x"}, "_itr": None, "_depends_on_deps": {}}
        ch_state.update(_make_dense=False, _make_sparse=False)  # Ch.__getstate__: __dict__ minus weakrefs
        return b"cchumpy.ch\nCh\n)\x81" + py2_pickle_body(ch_state) + b"b"
    if isinstance(obj, Csc):
        csc_state: dict[str, Any] = {"_shape": obj.dense.shape, "maxprint": 50, "indices": obj.indices}
        csc_state.update(indptr=obj.indptr, data=obj.data, format="csc")
        return b"cscipy.sparse.csc\ncsc_matrix\n)\x81" + py2_pickle_body(csc_state) + b"b"
    raise TypeError(type(obj))


def py2_pickle(obj: Any) -> bytes:
    return b"\x80\x02" + py2_pickle_body(obj) + b"."


# A derived chumpy node (no stored ``x``): FLAME files hold leaf ``Ch`` arrays, never these.
CHUMPY_SELECT = Raw(b"cchumpy.reordering\nSelect\n)\x81}b")


class FlameSpec:
    """A synthetic FLAME model: closed head mesh, shapedirs with 300 identity + 6 expression columns."""

    def __init__(self) -> None:
        rng = np.random.default_rng(RNG_SEED + 1)
        self.v_template, self.faces = closed_head_m()
        n = len(self.v_template)
        self.n = n
        self.shapedirs = rng.normal(0, 1e-3, (n, 3, 306))
        self.weights = rng.random((n, 5))
        self.j_regressor = np.where(rng.random((5, n)) < 0.1, rng.random((5, n)), 0.0)

    def expected(self, beta: np.ndarray, psi: np.ndarray) -> np.ndarray:
        return self.v_template + self.shapedirs[:, :, :300] @ beta + self.shapedirs[:, :, 300:] @ psi

    def entries(self, chumpy: bool = True) -> dict[str, Any]:
        wrap = Ch if chumpy else (lambda x: x)
        return {
            "J_regressor_prior": Csc(self.j_regressor),
            "f": self.faces.astype(np.uint32),
            "J_regressor": Csc(self.j_regressor),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
            "J": wrap(rng_joints()),
            "weights_prior": self.weights,
            "weights": wrap(self.weights),
            "posedirs": wrap(np.zeros((self.n, 3, 36))),
            "bs_style": "lbs",
            "v_template": wrap(self.v_template),
            "shapedirs": wrap(self.shapedirs),
            "bs_type": "lrotmin",
        }


def rng_joints() -> np.ndarray:
    return np.linspace(-0.05, 0.05, 15).reshape(5, 3)


@pytest.fixture(scope="module")
def flame_spec() -> FlameSpec:
    return FlameSpec()


@pytest.fixture
def no_chumpy_or_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any import of chumpy or scipy during the test fails: the reader must not need them."""
    for name in ("chumpy", "chumpy.ch", "scipy", "scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def flame_pkl(tmp_path: Path, flame_spec: FlameSpec) -> Path:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(py2_pickle(flame_spec.entries()))
    return path


@pytest.fixture
def flame_landmarks(tmp_path: Path) -> Path:
    return landmark_json(tmp_path / "flame_landmarks.json", np.arange(68) + 10)


def _check_flame(model: ShapeModel, spec: FlameSpec, names: list[str] | None = None) -> None:
    assert (model.num_vertices, model.num_identity, model.num_expression) == (spec.n, 300, 6)
    assert model.expression_names == (names or [f"expression_{i:03d}" for i in range(6)])
    assert model.identity_std.eq(1).all() and model.expression_std.eq(1).all()
    rng = np.random.default_rng(3)
    beta, psi = rng.normal(size=300), rng.normal(size=6)
    got = model.vertices(torch.tensor(beta[None]), torch.tensor(psi[None]))[0].numpy()
    np.testing.assert_allclose(got, spec.expected(beta, psi), atol=1e-6)  # metres, as FLAME stores them
    neutral = model.vertices(*model.zero_params())[0].numpy()
    np.testing.assert_allclose(neutral, spec.v_template, atol=1e-7)


def test_flame_python2_pickle_with_chumpy_and_sparse(
    flame_pkl: Path, flame_landmarks: Path, flame_spec: FlameSpec, no_chumpy_or_scipy: None
) -> None:
    model = load_shape_model(flame_pkl, flame_landmarks)
    _check_flame(model, flame_spec)
    np.testing.assert_array_equal(model.faces.numpy(), flame_spec.faces)
    assert model.provenance["faces_reversed"] is False
    assert {"posedirs", "J_regressor", "weights", "kintree_table"} <= set(model.provenance["ignored"])
    assert "chumpy" not in sys.modules or sys.modules["chumpy"] is None


def test_safe_pickle_stand_ins_capture_chumpy_and_sparse_state(
    flame_spec: FlameSpec, no_chumpy_or_scipy: None
) -> None:
    data = loads_restricted(py2_pickle(flame_spec.entries()))
    np.testing.assert_array_equal(to_plain_array(data["J_regressor"]), flame_spec.j_regressor)
    np.testing.assert_array_equal(to_plain_array(data["shapedirs"]), flame_spec.shapedirs)
    assert data["shapedirs"].source == "chumpy.ch.Ch" and data["shapedirs"].state["_dirty_vars"] == {"x"}
    assert data["f"].dtype == np.uint32 and data["bs_style"] == "lbs"


class FakeCh:
    """Pickled by Python 3 under its own name, then renamed to chumpy.ch.Ch in the stream."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self._dirty_vars: set[str] = set()


def test_flame_python3_protocol2_pickle(
    tmp_path: Path, flame_spec: FlameSpec, flame_landmarks: Path, no_chumpy_or_scipy: None
) -> None:
    """Python 3 writes bytes as _codecs.encode(..., 'latin1') and numpy as numpy.core.multiarray."""
    entries = flame_spec.entries(chumpy=False)
    entries = {k: v for k, v in entries.items() if not isinstance(v, Csc)}
    entries["shapedirs"] = FakeCh(flame_spec.shapedirs)
    data = pickle.dumps(entries, protocol=2)
    ours = f"c{FakeCh.__module__}\n{FakeCh.__qualname__}\n".encode()
    assert ours in data
    path = tmp_path / "flame_py3.pkl"
    path.write_bytes(data.replace(ours, b"cchumpy.ch\nCh\n"))
    _check_flame(load_shape_model(path, flame_landmarks), flame_spec)


def test_flame_npz_variant(tmp_path: Path, flame_spec: FlameSpec, flame_landmarks: Path) -> None:
    path = tmp_path / "flame.npz"
    np.savez(
        path, v_template=flame_spec.v_template, shapedirs=flame_spec.shapedirs, f=flame_spec.faces.astype(np.uint32),
        posedirs=np.zeros((flame_spec.n, 3, 36)), expression_names=np.array([f"ex{i}" for i in range(6)]),
    )
    model = load_shape_model(path, flame_landmarks)
    _check_flame(model, flame_spec, names=[f"ex{i}" for i in range(6)])
    assert model.provenance["format"] == "FLAME npz"


def test_flame_without_expression_columns(tmp_path: Path, flame_spec: FlameSpec, flame_landmarks: Path) -> None:
    path = tmp_path / "flame_shape_only.npz"
    np.savez(path, v_template=flame_spec.v_template, shapedirs=flame_spec.shapedirs[:, :, :300], f=flame_spec.faces)
    model = load_shape_model(path, flame_landmarks, num_identity=20)
    assert (model.num_identity, model.num_expression) == (20, 0)
    beta = np.random.default_rng(8).normal(size=20)
    got = model.vertices(torch.tensor(beta[None]))[0].numpy()
    np.testing.assert_allclose(got, flame_spec.v_template + flame_spec.shapedirs[:, :, :20] @ beta, atol=1e-6)


def test_flame_npz_with_pickled_objects_is_refused(tmp_path: Path, flame_spec: FlameSpec) -> None:
    path = tmp_path / "flame_obj.npz"
    np.savez(path, v_template=flame_spec.v_template, shapedirs=np.array([None], dtype=object), f=flame_spec.faces)
    with pytest.raises(ModelDataError, match="pickled Python objects"):
        load_shape_model(path, require_landmarks=False)


def test_flame_renders_and_uvs_have_no_seam_stretch(flame_pkl: Path, flame_landmarks: Path) -> None:
    model = load_shape_model(flame_pkl, flame_landmarks)
    uvs, uv_faces = model.uvs.numpy(), model.uv_faces.numpy()
    assert uvs.shape[0] > model.num_vertices  # corners copied across the seam behind the head
    assert uvs.min() >= 0 and uvs.max() <= 1
    assert np.ptp(uvs[uv_faces][..., 0], axis=1).max() < 0.25
    assert _render_mask(model, 0.45).sum() > 200


def test_cylindrical_uvs_cut_behind_a_closed_head() -> None:
    v, f = closed_head_m()
    uvs, uv_faces = cylindrical_uvs(v, f)
    front = int(np.argmax(v[:, 2]))  # the vertex at the tip of the "nose" (+z)
    assert uvs[front, 0] == pytest.approx(0.5, abs=0.02)
    # Seam copies behind the head and per-triangle copies at the poles: no triangle spans the map.
    assert np.ptp(uvs[uv_faces][..., 0], axis=1).max() < 0.25
    assert uvs[uv_faces].min() == pytest.approx(0.0) and uvs[uv_faces].max() == pytest.approx(1.0)


def test_flame_barycentric_landmarks_snap_to_nearest_vertex(
    tmp_path: Path, flame_pkl: Path, flame_spec: FlameSpec
) -> None:
    faces, mean = flame_spec.faces, flame_spec.v_template
    rng = np.random.default_rng(5)
    picked, corner, used = [], [], set()
    for fi in rng.permutation(len(faces)):
        j = int(rng.integers(3))
        if int(faces[fi, j]) not in used:
            used.add(int(faces[fi, j]))
            picked.append(int(fi))
            corner.append(j)
        if len(picked) == 68:
            break
    bary = np.full((68, 3), 0.05)
    bary[np.arange(68), corner] = 0.9
    emb = tmp_path / "embedding.pkl"
    emb.write_bytes(py2_pickle({"lmk_face_idx": np.array(picked, np.uint32), "lmk_b_coords": bary}))
    model = load_shape_model(flame_pkl, emb)
    assert model.landmark_indices.tolist() == [int(faces[f, j]) for f, j in zip(picked, corner)]

    # DECA's landmark_embedding.npy: np.save of a dict (an object array, read through safe_pickle).
    deca = tmp_path / "landmark_embedding.npy"
    embedding = {"full_lmk_faces_idx": np.array([picked]), "full_lmk_bary_coords": bary[None]}
    np.save(deca, np.array({**embedding, "static_lmk_faces_idx": np.zeros(51)}), allow_pickle=True)
    assert load_shape_model(flame_pkl, deca).landmark_indices.tolist() == model.landmark_indices.tolist()

    static = tmp_path / "flame_static_embedding.pkl"
    static.write_bytes(py2_pickle({"lmk_face_idx": np.array(picked[:51], np.uint32), "lmk_b_coords": bary[:51]}))
    with pytest.raises(ModelDataError, match="51 landmarks .*no jaw line"):
        load_shape_model(flame_pkl, static)


def test_snap_embedding_keeps_landmarks_distinct() -> None:
    mean = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    bary = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [1.0, 0, 0], [1.0, 0, 0]])
    got = snap_embedding(mean, faces, np.array([0, 0, 0, 0]), bary)
    assert got.tolist()[:3] == [0, 1, 2] and len(set(got.tolist())) == 4


def test_uv_obj_file(tmp_path: Path, flame_pkl: Path, flame_landmarks: Path, flame_spec: FlameSpec) -> None:
    rng = np.random.default_rng(6)
    vt = rng.random((len(flame_spec.faces) * 3, 2))
    lines = [f"v {x} {y} {z}" for x, y, z in flame_spec.v_template]
    lines += [f"vt {u} {v}" for u, v in vt]
    for i, tri in enumerate(flame_spec.faces):  # every corner its own UV: f v/vt v/vt v/vt
        lines.append("f " + " ".join(f"{a + 1}/{3 * i + k + 1}" for k, a in enumerate(tri)))
    obj = tmp_path / "head_template.obj"
    obj.write_text("\n".join(lines))
    model = load_shape_model(flame_pkl, flame_landmarks, uv_path=obj)
    np.testing.assert_allclose(model.uvs.numpy(), vt, atol=1e-7)
    assert model.uv_faces.numpy().tolist() == np.arange(3 * len(flame_spec.faces)).reshape(-1, 3).tolist()
    texture_space = tmp_path / "FLAME_texture.npz"  # FLAME's texture space stores UVs as vt/ft
    np.savez(texture_space, vt=vt, ft=np.arange(3 * len(flame_spec.faces)).reshape(-1, 3), mean=np.zeros(3))
    np.testing.assert_array_equal(load_shape_model(flame_pkl, flame_landmarks, uv_path=texture_space).uvs, model.uvs)
    other = tmp_path / "other.obj"
    other.write_text("v 0 0 0\nvt 0 0\nf 1/1 1/1 1/1\n")
    with pytest.raises(ModelDataError, match="not the model's"):
        load_shape_model(flame_pkl, flame_landmarks, uv_path=other)


# ---- hostile and broken pickles ---------------------------------------------------------------------
def _hostile_payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    code = f"open({str(marker)!r}, 'w').close()".encode()
    valid = FlameSpec().entries()
    return {
        "os.system protocol 0": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "posix.system protocol 2": b"\x80\x02cposix\nsystem\n" + _py2_str(cmd) + b"\x85R.",
        "builtins.eval": b"\x80\x02cbuiltins\neval\n" + _py2_str(code) + b"\x85R.",
        "__builtin__.exec": b"\x80\x02c__builtin__\nexec\n" + _py2_str(code) + b"\x85R.",
        "subprocess in a FLAME dict": py2_pickle(
            {**valid, "f": Raw(b"csubprocess\ncall\n" + py2_pickle_body((["touch", str(marker)],)) + b"R")}
        ),
        "getattr chain": b"\x80\x02c__builtin__\ngetattr\n(c__builtin__\nobject\nU\x0e__subclasses__tR.",
        "numpy.load": b"\x80\x02cnumpy\nload\n" + _py2_str(str(marker)) + b"\x85R.",
        "protocol 4 stack global": b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.",
        "copyreg reconstructor of os.system": (
            b"\x80\x02ccopy_reg\n_reconstructor\ncos\nsystem\nc__builtin__\nobject\nN\x87R."
        ),
    }


def test_hostile_pickles_are_refused_without_running(tmp_path: Path, no_chumpy_or_scipy: None) -> None:
    marker = tmp_path / "pwned"
    for label, payload in _hostile_payloads(marker).items():
        path = tmp_path / "evil.pkl"
        path.write_bytes(payload)
        with pytest.raises(ModelDataError) as info:
            load_shape_model(path, require_landmarks=False)
        text = str(info.value)
        assert "refused" in text and "\n" not in text, (label, text)
        assert not marker.exists(), label
    assert not marker.exists()


def test_hostile_landmark_pickle_is_refused(tmp_path: Path, flame_pkl: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "flame_static_embedding.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(ModelDataError, match="refused: it asks to run os.system"):
        load_shape_model(flame_pkl, evil)
    # An object .npy (np.save of a dict, as DECA ships) is a pickle after its header.
    evil_npy = tmp_path / "landmark_embedding.npy"
    with evil_npy.open("wb") as stream:
        np.lib.format.write_array_header_1_0(stream, np.lib.format.header_data_from_array_1_0(np.empty((), object)))
        stream.write(_hostile_payloads(marker)["posix.system protocol 2"])
    with pytest.raises(ModelDataError, match="refused: it asks to run posix.system"):
        load_shape_model(flame_pkl, evil_npy)
    assert not marker.exists()


def test_restricted_helpers_refuse_misuse(tmp_path: Path) -> None:
    # _codecs.encode with a codec other than latin-1, copyreg._reconstructor with a real class.
    for payload in (
        b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.",
        b"\x80\x02ccopy_reg\n_reconstructor\ncnumpy\nndarray\nc__builtin__\nobject\nN\x87R.",
    ):
        path = tmp_path / "odd.pkl"
        path.write_bytes(payload)
        with pytest.raises(ModelDataError, match="not a readable pickle"):
            load_shape_model(path, require_landmarks=False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: py2_pickle([1, 2, 3]), "holds a list, not FLAME's dict"),
        (lambda s: py2_pickle({"v_template": s.v_template, "f": s.faces.astype(np.uint32)}), "lacks shapedirs"),
        (lambda s: py2_pickle({**s.entries(), "shapedirs": Ch(np.zeros((s.n, 3)))}), "shapedirs of shape"),
        (lambda s: py2_pickle({**s.entries(), "v_template": Ch(np.full((s.n, 3), np.nan))}), "NaN or infinite"),
        (lambda s: py2_pickle({**s.entries(), "f": np.full((4, 3), 10_000, np.uint32)}), "indexing vertex 10000"),
        (lambda s: py2_pickle({**s.entries(), "f": np.zeros((4, 3))}), "expected (F, 3) integers"),
        (lambda s: py2_pickle({**s.entries(), "shapedirs": CHUMPY_SELECT}), "is a chumpy expression"),
        (lambda s: py2_pickle(s.entries())[:5000], "truncated"),
        (lambda s: b"hello, this is not a pickle", "not a readable pickle"),
        (lambda s: b"", "truncated"),
    ],
)
def test_flame_bad_files_say_what_is_wrong(tmp_path: Path, flame_spec: FlameSpec, make: Any, message: str) -> None:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(make(flame_spec))
    with pytest.raises(ModelDataError) as info:
        load_shape_model(path, require_landmarks=False)
    text = str(info.value)
    assert message in text and "\n" not in text, text


# ---- dispatch ---------------------------------------------------------------------------------------
def test_ganfit_npz_and_default_go_through_the_same_entry_point() -> None:
    default = load_shape_model(None)
    same = load_shape_model(DEFAULT_MODEL_FILE)
    assert same.num_vertices == default.num_vertices == 4538
    assert same.landmark_indices.tolist() == default.landmark_indices.tolist()
    with pytest.raises(ModelDataError, match="apply to BFM and FLAME files only"):
        load_shape_model(DEFAULT_MODEL_FILE, num_identity=3)


def test_unknown_npz_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "weird.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ModelDataError, match="lacks v_template, shapedirs, f"):
        load_shape_model(path)


def test_winding_check_on_closed_and_open_meshes() -> None:
    for v, f in (closed_head_m(), face_mask_mm()):
        assert faces_point_outward(v, f)
        assert not faces_point_outward(v, f[:, [0, 2, 1]])
