"""Hostile model files: small files that declare huge arrays, and empty or truncated files.

Issue 16 (class 2): a 2 kB HDF5 file declaring a gzip-chunked ``(3, 10**9)`` dataset drove the
process to 22 GB before the kernel killed it. Every model reader must check the sizes a file
*declares* before it reads, and refuse in one line. Each hostile file is loaded in a child
process whose address space is capped at what it had after its imports plus 1 GiB: a reader
that allocates what the file declares dies there with MemoryError (or a raw exception) instead
of the ``ModelDataError`` the test asks for, and the child reports how far its peak memory grew.
Class 5: an empty (or truncated) ``--texture-model`` gave a traceback instead of one line.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

from ganfit.errors import ModelDataError
from ganfit.models import limits
from ganfit.models.shape_model import DEFAULT_MODEL_FILE
from ganfit.texture.model import SHIPPED_GAN

HEADROOM = 1 << 30  # address space the child may add to what its imports took
GROWTH_LIMIT_MIB = 200  # a refused file must not raise the child's peak memory more than this

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    setup, call, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    namespace = {}
    exec(setup, namespace)
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, hard))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    try:
        exec(call, namespace)
        outcome = {"type": None, "message": "loaded without an error"}
    except BaseException as exc:
        outcome = {"type": type(exc).__name__, "message": str(exc)}
    outcome["seconds"] = time.monotonic() - start
    outcome["grew_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print("OUTCOME " + json.dumps(outcome))
    """
)


def _load_limited(setup: str, call: str, path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``setup`` then ``call`` (with ``PATH`` bound to ``path``) in a memory-capped child."""
    setup = f"from pathlib import Path\nPATH = Path({str(path)!r})\n{setup}"
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, setup, call, str(HEADROOM)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert lines, f"child died (rc {result.returncode}): {result.stderr[-2000:]}"
    return dict(json.loads(lines[-1][len("OUTCOME "):]))


def _assert_refused(outcome: dict[str, Any], path: Path, *parts: str, about_size: bool = True) -> None:
    assert outcome["type"] == "ModelDataError", outcome
    message = outcome["message"]
    assert "\n" not in message and str(path) in message, message
    if about_size:
        assert limits.LIMIT_ENV in message, message  # says how to allow a genuinely large model
    for part in parts:
        assert part in message, message
    assert outcome["grew_mib"] < GROWTH_LIMIT_MIB, outcome
    assert outcome["seconds"] < 30, outcome


# ---- building hostile files -------------------------------------------------------------------
def _npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    npy_format.write_array(stream, array, allow_pickle=False)
    return stream.getvalue()


def _npy_declaring(shape: tuple[int, ...], dtype: Any = np.float64, data: bytes = b"\0" * 64) -> bytes:
    """An .npy header that declares ``shape`` followed by a few bytes of data (a 2.0 header, as a
    hand-made file could use; numpy reads both versions)."""
    stream = io.BytesIO()
    npy_format.write_array_header_2_0(
        stream, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return stream.getvalue() + data


def _npz(path: Path, members: dict[str, np.ndarray | bytes], compress: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, value in members.items():
            archive.writestr(f"{name}.npy", value if isinstance(value, bytes) else _npy_bytes(value))
    return path


HUGE = (5023, 3, 10**6)  # FLAME's vertex count with a million blendshapes: 112 GiB of float64


def _bfm_hostile(path: Path) -> Path:
    """A BFM layout whose first dataset read (points) declares (3, 10**9) float32, gzip-chunked:
    no chunk is written, so the file stays a few kB."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("shape/representer/points", shape=(3, 10**9), dtype=np.float32,
                         chunks=(1, 1 << 20), compression="gzip")
        f.create_dataset("shape/representer/cells", data=np.zeros((3, 1), np.int32))
    assert path.stat().st_size < 100_000
    return path


def _pickle_body(value: Any) -> bytes:
    """``value`` pickled without the protocol header and STOP, to splice into a hand-made pickle.
    Each body only reads back memo entries it wrote itself, so bodies can follow one another."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _stand_in(module: str, name: str, state: dict[str, Any]) -> bytes:
    """A chumpy/scipy object as Python pickles it: class(), then BUILD with its state."""
    return _global(module, name) + b")\x81" + _pickle_body(state) + b"b"


def _flame_pickle(path: Path, shapedirs: bytes) -> Path:
    """A FLAME dict pickle whose shapedirs is the hand-made pickle fragment ``shapedirs``."""
    template = np.zeros((4, 3))
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    body = (
        b"}(" + _pickle_body("v_template") + _pickle_body(template)
        + _pickle_body("shapedirs") + shapedirs
        + _pickle_body("f") + _pickle_body(faces) + b"u"
    )
    path.write_bytes(b"\x80\x02" + body + b".")
    assert path.stat().st_size < 200_000
    return path


class _ObjectArray:
    """Pickles as numpy's own array reconstruction of an object array declaring ``shape``
    (numpy allocates and fills the whole array before it looks at the list)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self) -> tuple[Any, ...]:
        reconstruct = np.empty(0).__reduce__()[0]
        return reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype(object), False, [])


def _laughs(depth: int = 3, width: int = 1000) -> list[Any]:
    """A list of lists ``width**depth`` floats large that pickles in a few kB (shared rows)."""
    value: list[Any] = [0.0] * width
    for _ in range(depth - 1):
        value = [value] * width
    return value


_SHAPE = "from ganfit.models.standard_3dmm import load_shape_model\n"
_LOAD_SHAPE = "load_shape_model(PATH, require_landmarks=False)"


def _pickle_sparse(path: Path) -> Path:
    state = {"data": np.ones(1), "indices": np.zeros(1, np.int32), "indptr": np.array([0, 1, 1], np.int32),
             "_shape": (2, 10**9)}  # one value, whose dense form is 14.9 GiB
    return _flame_pickle(path, _stand_in("scipy.sparse._csr", "csr_matrix", state))


def _pickle_sparse_indptr(path: Path) -> Path:
    state = {"data": np.zeros(1), "indices": np.zeros(1, np.int32), "indptr": np.array([0, 10**10]),
             "_shape": (2, 1)}  # indptr claims ten billion entries for one column
    return _flame_pickle(path, _stand_in("scipy.sparse._csc", "csc_matrix", state))


def _pickle_object_array(path: Path) -> Path:
    return _flame_pickle(path, _pickle_body(_ObjectArray((10**9,))))


def _pickle_laughs(path: Path) -> Path:
    return _flame_pickle(path, _stand_in("chumpy.ch", "Ch", {"x": _laughs()}))


def _flame_npz(path: Path) -> Path:
    return _npz(path, {"v_template": np.zeros((4, 3)), "shapedirs": _npy_declaring(HUGE),
                       "f": np.array([[0, 1, 2]], np.int64)})


def _ganfit_npz(path: Path) -> Path:
    with np.load(DEFAULT_MODEL_FILE) as data:
        arrays: dict[str, np.ndarray | bytes] = {k: data[k] for k in data.files}
    arrays["identity_basis"] = _npy_declaring((10**6, 4538, 3), np.float32)
    return _npz(path, arrays)


def _texture_pca(path: Path) -> Path:
    return _npz(path, {"kind": np.array("pca"), "version": np.array(1), "mean": np.zeros((3, 8, 8), np.float32),
                       "basis": _npy_declaring((10**5, 3 * 1024 * 1024), np.float16),
                       "std": np.ones(1, np.float32), "explained_variance_ratio": np.ones(1, np.float32),
                       "info": np.array("{}")})


def _texture_kind(path: Path) -> Path:
    """The 'kind' member itself declares one string of 300 million characters (1.1 GiB of UCS-4)."""
    return _npz(path, {"kind": _npy_declaring((), "<U300000000")})


def _gan_weights(path: Path) -> Path:
    return _npz(path, {"kind": np.array("gan"), "version": np.array(1), "config": np.array("{}"),
                       "info": np.array("{}"), "param/huge": _npy_declaring((10**10,), np.float16),
                       "w_mean": np.zeros(4, np.float32), "w_cov": np.eye(4, dtype=np.float32)})


def _landmark_npy(path: Path) -> Path:
    path.write_bytes(_npy_declaring((10**10,), np.int64))
    return path


def _uv_npz(path: Path) -> Path:
    return _npz(path, {"vt": _npy_declaring((10**10, 2)), "ft": np.zeros((1, 3), np.int64)})


HOSTILE = {
    # name: (builder, file name, setup, call, words the message must hold)
    "bfm-hdf5-gzip-chunked": (_bfm_hostile, "model2017.h5", _SHAPE, _LOAD_SHAPE, ("shape/representer/points",)),
    "flame-pickle-sparse-shape": (_pickle_sparse, "generic_model.pkl", _SHAPE, _LOAD_SHAPE, ("shapedirs",)),
    "flame-pickle-sparse-indptr": (
        _pickle_sparse_indptr, "generic_model.pkl", _SHAPE, _LOAD_SHAPE, ("shapedirs", "do not fit together"),
    ),
    "flame-pickle-object-array": (_pickle_object_array, "generic_model.pkl", _SHAPE, _LOAD_SHAPE, ("declares",)),
    "flame-pickle-shared-lists": (_pickle_laughs, "generic_model.pkl", _SHAPE, _LOAD_SHAPE, ("shapedirs",)),
    "flame-npz": (_flame_npz, "flame.npz", _SHAPE, _LOAD_SHAPE, ("'shapedirs'", "112.3 GiB")),
    "ganfit-npz": (_ganfit_npz, "head.npz", _SHAPE, "load_shape_model(PATH)", ("'identity_basis'",)),
    "ganfit-npz-direct": (
        _ganfit_npz, "head.npz", "from ganfit.models.shape_model import ShapeModel\n",
        "ShapeModel.from_npz(PATH)", ("'identity_basis'",),
    ),
    "texture-pca": (
        _texture_pca, "pca.npz", "from ganfit.texture.model import load_texture_model\n",
        "load_texture_model(PATH)", ("'basis'",),
    ),
    "texture-pca-direct": (
        _texture_pca, "pca.npz", "from ganfit.texture.pca import PcaTextureModel\n",
        "PcaTextureModel.load(PATH)", ("'basis'",),
    ),
    "texture-kind": (
        _texture_kind, "kind.npz", "from ganfit.texture.model import load_texture_model\n",
        "load_texture_model(PATH)", ("'kind'",),
    ),
    "gan-weights": (
        _gan_weights, "gan.npz", "from ganfit.texture.gan import load_generator\n",
        "load_generator(PATH)", ("'param/huge'",),
    ),
    "gan-detail": (
        _gan_weights, "gan.npz", "from ganfit.texture.gan import load_detail\n",
        "load_detail(PATH)", ("'param/huge'",),
    ),
    "landmark-npy": (
        _landmark_npy, "landmarks.npy",
        "import numpy as np\nfrom ganfit.models.standard_3dmm import read_landmarks\n",
        "read_landmarks(PATH, np.zeros((4, 3)), np.zeros((1, 3), np.int64))", (),
    ),
    "uv-npz": (
        _uv_npz, "uv.npz", "import numpy as np\nfrom ganfit.models.standard_3dmm import read_uv_file\n",
        "read_uv_file(PATH, np.zeros((1, 3), np.int64), 4)", ("'vt'",),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_declared_sizes_are_refused_before_reading(tmp_path: Path, case: str) -> None:
    build, name, setup, call, parts = HOSTILE[case]
    path = build(tmp_path / name)
    about_size = "do not fit together" not in parts  # an inconsistent sparse matrix is not a size problem
    _assert_refused(_load_limited(setup, call, path), path, *parts, about_size=about_size)


def test_hdf5_chunk_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    """A resizable dataset may hold few values in one huge chunk, which HDF5 allocates whole."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "chunk.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("shape/representer/points", data=np.zeros((3, 4), np.float32), maxshape=(3, None),
                         chunks=(3, 1 << 20), compression="gzip")
        f.create_dataset("shape/representer/cells", data=np.zeros((3, 1), np.int32))
    # With the limit at 1 MiB, the 12 MiB chunk is over it though the dataset is 48 bytes.
    outcome = _load_limited(_SHAPE, _LOAD_SHAPE, path, env={limits.LIMIT_ENV: str(1 / 1024)})
    _assert_refused(outcome, path, "chunk")


def test_limit_can_be_raised_for_a_genuinely_large_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = limits.SizeBudget(tmp_path / "big.npz", "Test model", "check it")
    with pytest.raises(limits.DeclaredSizeError, match="2.0 GiB"):
        budget.check("'basis'", (1 << 29,), np.float32)
    monkeypatch.setenv(limits.LIMIT_ENV, "3")
    assert limits.array_limit() == 3 << 30 and limits.total_limit() == 12 << 30
    assert budget.check("'basis'", (1 << 29,), np.float32) == 2 << 30
    monkeypatch.setenv(limits.LIMIT_ENV, "nonsense")
    assert limits.array_limit() == limits.ARRAY_LIMIT_BYTES


def test_many_arrays_under_the_limit_still_count_toward_the_file(tmp_path: Path) -> None:
    path = _npz(tmp_path / "many.npz", {f"a{i}": _npy_declaring((900 << 20,), np.uint8) for i in range(5)})
    with pytest.raises(ModelDataError) as info:
        limits.check_npz(path, "Test model", "check it")
    assert "'a4'" in str(info.value) and "4.0 GiB" in str(info.value)


# ---- ONNX ------------------------------------------------------------------------------------------
def _onnx_model(initializer: Any) -> Any:
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    node = helper.make_node("Add", ["input.1", initializer.name], ["emb"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("input.1", tp.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("emb", tp.FLOAT, ["N", 512])], initializer=[initializer],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _onnx_declared_dims(path: Path) -> Path:
    """An initializer declaring (10**10,) floats that holds none: the file is a few hundred bytes."""
    onnx = pytest.importorskip("onnx")
    tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[10**10])
    path.write_bytes(_onnx_model(tensor).SerializeToString())
    return path


def _onnx_external_data(path: Path) -> Path:
    """An initializer whose data is 'in' a sparse 8 GiB file beside the model (no disk used)."""
    onnx = pytest.importorskip("onnx")
    tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2 << 30])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(8 << 30))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    with open(path.with_name("weights.bin"), "wb") as stream:
        stream.truncate(8 << 30)
    path.write_bytes(_onnx_model(tensor).SerializeToString())
    return path


@pytest.mark.parametrize("build", [_onnx_declared_dims, _onnx_external_data], ids=["dims", "external-data"])
def test_onnx_initializers_are_checked_before_conversion(tmp_path: Path, build: Any) -> None:
    path = build(tmp_path / "w600k_r50.onnx")
    setup = "from ganfit.face.arcface import load_arcface\n"
    _assert_refused(_load_limited(setup, "load_arcface(PATH, backend='builtin')", path), path, "'w'")


def test_onnx_external_data_within_the_limits_still_loads(tmp_path: Path) -> None:
    """The check reads external weights itself once they pass: the model must still work."""
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from ganfit.face.arcface import load_arcface

    helper, tp = onnx.helper, onnx.TensorProto
    weight = np.random.default_rng(3).standard_normal((3 * 112 * 112, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "w"], ["emb"])],
        "g", [helper.make_tensor_value_info("input.1", tp.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("emb", tp.FLOAT, ["N", 8])],
        initializer=[onnx.numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "external.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path),
                    save_as_external_data=True, location="external.bin", size_threshold=0)
    assert path.stat().st_size < 1000 and (tmp_path / "external.bin").stat().st_size == weight.nbytes
    chips = torch.rand(2, 3, 112, 112)
    expected = ((chips.numpy() * 255 - 127.5) / 127.5).reshape(2, -1) @ weight
    np.testing.assert_allclose(load_arcface(path, backend="builtin").embed(chips).numpy(), expected, rtol=1e-4, atol=2e-3)


# ---- TorchScript (FAN) -----------------------------------------------------------------------------
def test_torchscript_archive_declaring_huge_members_is_refused(tmp_path: Path) -> None:
    """torch allocates a zip member's declared uncompressed size before inflating it."""
    path = tmp_path / "2DFAN4.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            block = bytes(1 << 24)
            for _ in range(80):  # 1.25 GiB of zeros, ~1.3 MB deflated
                member.write(block)
    assert path.stat().st_size < 5_000_000
    outcome = _load_limited("from ganfit.face.fan_landmarks import FanLandmarks\n", "FanLandmarks(PATH)", path)
    _assert_refused(outcome, path, "archive/data/0")


# ---- empty and truncated files (class 5) ---------------------------------------------------------
def _readers() -> dict[str, tuple[str, Any]]:
    """File suffix and a call that reads it, for every model reader."""
    from ganfit.face.recognition import read_dlib_resnet_weights
    from ganfit.models.bfm import read_bfm
    from ganfit.models.flame import read_flame
    from ganfit.models.shape_model import ShapeModel
    from ganfit.models.standard_3dmm import load_shape_model, read_landmarks, read_uv_file
    from ganfit.texture.gan import load_detail, load_generator
    from ganfit.texture.model import load_texture_model
    from ganfit.texture.pca import PcaTextureModel

    mean, faces = np.zeros((4, 3)), np.zeros((1, 3), np.int64)
    readers: dict[str, tuple[str, Any]] = {
        "texture-model": (".npz", load_texture_model),
        "pca": (".npz", PcaTextureModel.load),
        "gan": (".npz", load_generator),
        "gan-detail": (".npz", load_detail),
        "shape-npz": (".npz", lambda p: load_shape_model(p, require_landmarks=False)),
        "shape-h5": (".h5", lambda p: load_shape_model(p, require_landmarks=False)),
        "shape-pkl": (".pkl", lambda p: load_shape_model(p, require_landmarks=False)),
        "ganfit-npz": (".npz", ShapeModel.from_npz),
        "bfm": (".h5", read_bfm),
        "flame-npz": (".npz", lambda p: read_flame(p, "npz")),
        "flame-pkl": (".pkl", lambda p: read_flame(p, "pickle")),
        "landmarks-npy": (".npy", lambda p: read_landmarks(p, mean, faces)),
        "landmarks-npz": (".npz", lambda p: read_landmarks(p, mean, faces)),
        "uv-npz": (".npz", lambda p: read_uv_file(p, faces, 4)),
        "dlib-dat": (".dat", read_dlib_resnet_weights),
    }
    try:
        from ganfit.face.arcface import load_arcface

        readers["arcface"] = (".onnx", load_arcface)
    except ImportError:
        pass
    from ganfit.face.fan_landmarks import FanLandmarks

    readers["fan"] = (".zip", FanLandmarks)
    return readers


READERS = sorted(_readers())


@pytest.mark.parametrize("reader", READERS)
def test_empty_model_files_are_one_line_errors(tmp_path: Path, reader: str) -> None:
    suffix, read = _readers()[reader]
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ModelDataError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("reader", ["texture-model", "pca", "gan", "gan-detail", "shape-npz", "ganfit-npz"])
@pytest.mark.parametrize("cut", [100, 5_000_000])
def test_truncated_npz_model_files_are_one_line_errors(tmp_path: Path, reader: str, cut: int) -> None:
    """The shipped GAN cut short: inside its first member, and inside a later one (whose zip
    directory is lost, as in any partial download)."""
    path = tmp_path / "cut.npz"
    path.write_bytes(SHIPPED_GAN.read_bytes()[:cut])
    with pytest.raises(ModelDataError) as info:
        _readers()[reader][1](path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


def test_texture_model_cli_value_for_an_empty_file(tmp_path: Path) -> None:
    """What `ganfit reconstruct PHOTO --texture-model empty.npz` opens: one line naming the file."""
    from ganfit.texture.model import load_texture_model, resolve_texture_model

    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    resolved = resolve_texture_model(str(path))
    assert resolved == str(path)
    with pytest.raises(ModelDataError, match="empty") as info:
        load_texture_model(resolved)
    assert "\n" not in str(info.value)


# ---- the real models stay far inside the limits ------------------------------------------------------
@pytest.mark.parametrize("path", [SHIPPED_GAN, DEFAULT_MODEL_FILE], ids=["texture_gan", "anny_head"])
def test_shipped_models_pass_the_checks_with_room(path: Path) -> None:
    names = limits.check_npz(path, "Shipped model", "reinstall ganfit")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(names) == sorted(data.files)
        assert max(data[k].nbytes for k in data.files) < limits.array_limit() // 16


def test_pickle_files_larger_than_a_model_file_may_be_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restricted unpickler reads the whole file: its size is checked first (limit lowered here)."""
    from ganfit.models.safe_pickle import load_pickle_file

    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros((1000, 3))}, protocol=2))
    monkeypatch.setenv(limits.LIMIT_ENV, str(4096 / (1 << 30)))  # 4 KiB an array, 16 KiB a file
    with pytest.raises(ModelDataError, match="more than the 16.0 KiB a model file may take") as info:
        load_pickle_file(path, "FLAME model", "check it")
    assert str(path) in str(info.value) and limits.LIMIT_ENV in str(info.value)
