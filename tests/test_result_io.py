"""The result folder: exact round trip, version checks, atomic writes, refusals."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ganfit.errors import GanfitError, OutputError
from ganfit.io import atomic, result as result_module
from ganfit.io.result import (
    GLB_FILE,
    MESH_NPZ,
    MTL_FILE,
    OBJ_FILE,
    PREVIEW_PNG,
    RESULT_FORMAT,
    RESULT_JSON,
    RESULT_VERSION,
    TEXTURE_PNG,
    CameraParams,
    LightParams,
    Reconstruction,
    ResultFileError,
    check_output_folder,
    read_result,
    result_files,
    write_result,
)

RING, RINGS = 8, 3


def synthetic_reconstruction(seed: int = 0, preview: bool = True) -> Reconstruction:
    """An open cylinder (8 around, 3 rings) whose UVs wrap, so column 0 has a UV seam."""
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * np.arange(RING) / RING
    neutral = np.array(
        [[0.1 * np.cos(t), 0.05 * r, 0.1 * np.sin(t)] for r in range(RINGS) for t in theta],
        np.float32,
    )
    uvs = np.array(
        [[j / RING, r / (RINGS - 1)] for r in range(RINGS) for j in range(RING + 1)], np.float32
    )
    faces, uv_faces = [], []
    for r in range(RINGS - 1):
        for j in range(RING):
            a, b = r * RING + j, r * RING + (j + 1) % RING
            c, d = (r + 1) * RING + (j + 1) % RING, (r + 1) * RING + j
            ta, tb = r * (RING + 1) + j, r * (RING + 1) + j + 1
            tc, td = (r + 1) * (RING + 1) + j + 1, (r + 1) * (RING + 1) + j
            faces += [[a, c, b], [a, d, c]]  # outward-facing (counter-clockwise seen from outside)
            uv_faces += [[ta, tc, tb], [ta, td, tc]]
    names = ["jawOpen", "eyeBlinkLeft", "mouthSmileRight"]
    deltas = (rng.normal(size=(len(names), len(neutral), 3)) * 0.01).astype(np.float32)
    weights = np.array([0.5, -0.25, 1.0], np.float32)
    vertices = neutral + np.einsum("e,evc->vc", weights, deltas)
    return Reconstruction(
        photos=["photos/a.jpg", "photos/b é.png"],
        vertices=vertices,
        neutral_vertices=neutral,
        faces=np.array(faces),
        uvs=uvs,
        uv_faces=np.array(uv_faces),
        expression_names=names,
        expression_weights=weights,
        expression_deltas=deltas,
        identity_names=[f"nose-{i}" for i in range(5)],
        identity_coefficients=rng.normal(size=5),
        landmark_indices=rng.integers(0, len(neutral), size=68),
        landmarks_2d=rng.uniform(0, 200, size=(68, 2)),
        landmark_error_iod=0.0421,
        camera=CameraParams(
            position=[0.0, 0.02, 0.9],
            look_at=[0, 0.05, 0],
            up=[0, 1, 0],
            focal=1.3,
            width=200,
            height=250,
        ),
        light=LightParams(
            position=[0.5, 1.0, 2.0], colour=[0.9, 0.8, 0.7], ambient=[0.3, 0.3, 0.35]
        ),
        texture=rng.integers(0, 256, size=(16, 32, 3), dtype=np.uint8),
        preview=rng.integers(0, 256, size=(25, 20, 3), dtype=np.uint8) if preview else None,
        shape_model="anny-head (test)",
        texture_model="none",
        losses={"landmark": [1.5, 0.75, 0.125], "pixel": [0.3, 0.2]},
        settings={"mode": "ganfit", "steps": 3, "lr": 0.01, "nested": {"a": [1, 2]}},
    )


def assert_same(a: Reconstruction, b: Reconstruction, *, skip: tuple[str, ...] = ()) -> None:
    """Field by field, arrays by value and dtype."""
    for name in Reconstruction.__dataclass_fields__:
        if name in skip:
            continue
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x.dtype == y.dtype, name
            assert np.array_equal(x, y), name
        elif isinstance(x, (CameraParams, LightParams)):
            for sub in type(x).__dataclass_fields__:
                assert np.array_equal(getattr(x, sub), getattr(y, sub)), f"{name}.{sub}"
        else:
            assert x == y, name


def siblings(folder: Path) -> list[str]:
    """Everything in the folder, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def recon() -> Reconstruction:
    return synthetic_reconstruction()


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out")
    assert out == tmp_path / "out"
    back = read_result(out)
    assert_same(recon, back, skip=("created",))
    assert back.created is not None and back.created.endswith("+00:00")
    # a second trip keeps everything, the time stamp included
    again = read_result(write_result(back, tmp_path / "again"))
    assert_same(back, again)


def test_folder_layout_and_json(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out")
    assert siblings(out) == sorted(
        [RESULT_JSON, MESH_NPZ, TEXTURE_PNG, PREVIEW_PNG, OBJ_FILE, MTL_FILE, GLB_FILE]
    )
    assert siblings(tmp_path) == ["out"]
    doc = json.loads((out / RESULT_JSON).read_text(encoding="utf-8"))
    assert doc["format"] == RESULT_FORMAT and doc["version"] == RESULT_VERSION
    assert doc["files"] == {
        "mesh": MESH_NPZ,
        "texture": TEXTURE_PNG,
        "preview": PREVIEW_PNG,
        "obj": OBJ_FILE,
        "mtl": MTL_FILE,
        "glb": GLB_FILE,
    }
    assert doc["counts"] == {
        "vertices": 24,
        "faces": 32,
        "uvs": 27,
        "expressions": 3,
        "identity": 5,
        "landmarks": 68,
    }
    assert [e["name"] for e in doc["expressions"]] == recon.expression_names
    assert doc["expressions"][0]["weight"] == 0.5
    assert doc["camera"]["width"] == 200 and doc["camera"]["focal"] == 1.3
    assert doc["coordinates"] == {"units": "metres", "up": "+y", "face": "+z", "uv_v": "up"}
    with np.load(out / MESH_NPZ, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            [
                "vertices",
                "neutral_vertices",
                "faces",
                "uvs",
                "uv_faces",
                "expression_deltas",
                "landmark_indices",
                "landmarks_2d",
            ]
        )


def test_json_numbers_are_short_and_exact(tmp_path: Path, recon: Reconstruction) -> None:
    """float32 weights are written as their shortest decimal (0.3, not 0.30000001192092896)."""
    weights = np.array([0.3, 1e-8, -2.5], np.float32)
    deltas = recon.expression_deltas
    changed = Reconstruction(
        **{
            **recon.__dict__,
            "expression_weights": weights,
            "vertices": recon.neutral_vertices + np.einsum("e,evc->vc", weights, deltas),
        }
    )
    out = write_result(changed, tmp_path / "out", exports=False)
    text = (out / RESULT_JSON).read_text(encoding="utf-8")
    assert '{"name": "jawOpen", "weight": 0.3}' in text
    assert '"position": [0.0, 0.02, 0.9]' in text
    assert np.array_equal(read_result(out).expression_weights, weights)


def test_without_exports_or_preview(tmp_path: Path) -> None:
    recon = synthetic_reconstruction(preview=False)
    out = write_result(recon, tmp_path / "out", exports=False)
    assert siblings(out) == sorted([RESULT_JSON, MESH_NPZ, TEXTURE_PNG])
    back = read_result(out / RESULT_JSON)  # the json path works as well as the folder
    assert back.preview is None
    assert_same(recon, back, skip=("created",))


def test_non_finite_losses_survive_as_nan(tmp_path: Path, recon: Reconstruction) -> None:
    diverged = Reconstruction(**{**recon.__dict__, "losses": {"pixel": [1.0, math.inf, math.nan]}})
    out = write_result(diverged, tmp_path / "out", exports=False)
    json.loads(
        (out / RESULT_JSON).read_text(),
        parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"),
    )
    curve = read_result(out).losses["pixel"]
    assert curve[0] == 1.0 and math.isnan(curve[1]) and math.isnan(curve[2])


def test_read_without_images(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    (out / TEXTURE_PNG).write_bytes(b"not a png")  # proves the PNG is not opened
    back = read_result(out, load_images=False)
    assert back.texture.shape == (0, 0, 3) and back.preview is None
    assert np.array_equal(back.vertices, recon.vertices)
    assert result_files(out)["texture"] == out / TEXTURE_PNG


def test_rgba_texture_edited_by_an_artist_reads_as_rgb(
    tmp_path: Path, recon: Reconstruction
) -> None:
    from PIL import Image

    out = write_result(recon, tmp_path / "out", exports=False)
    Image.open(out / TEXTURE_PNG).convert("RGBA").save(out / TEXTURE_PNG)
    assert np.array_equal(read_result(out).texture, recon.texture)


# --- validation -----------------------------------------------------------------------------


def test_validate_rejects_inconsistent_data(recon: Reconstruction) -> None:
    fields = recon.__dict__
    bad_vertices = recon.vertices + 0.01
    with pytest.raises(ValueError, match="expression_deltas"):
        Reconstruction(**{**fields, "vertices": bad_vertices}).validate()
    with pytest.raises(ValueError, match="faces"):
        Reconstruction(**{**fields, "faces": recon.faces + 100}).validate()
    with pytest.raises(ValueError, match="unique"):
        Reconstruction(**{**fields, "expression_names": ["a", "a", "b"]}).validate()
    with pytest.raises(ValueError, match="expressions"):
        Reconstruction(**{**fields, "expression_names": ["a", "b"]}).validate()
    with pytest.raises(ValueError, match="settings"):
        Reconstruction(**{**fields, "settings": {"path": Path("x")}}).validate()
    with pytest.raises(ValueError, match="camera.focal"):
        Reconstruction(
            **{**fields, "camera": CameraParams([0, 0, 1], [0, 0, 0], [0, 1, 0], 0.0, 10, 10)}
        ).validate()
    with pytest.raises(ValueError, match="texture"):
        Reconstruction(**{**fields, "texture": np.zeros((4, 4), np.uint8)}).validate()


def test_write_refuses_inconsistent_data_and_leaves_nothing(
    tmp_path: Path, recon: Reconstruction
) -> None:
    bad = Reconstruction(**{**recon.__dict__, "vertices": recon.vertices + 0.01})
    with pytest.raises(ValueError, match="inconsistent"):
        write_result(bad, tmp_path / "out")
    assert siblings(tmp_path) == []


def test_camera_field_of_view() -> None:
    cam = CameraParams([0, 0, 1], [0, 0, 0], [0, 1, 0], focal=0.5, width=100, height=100)
    assert cam.yfov == pytest.approx(math.pi / 2)  # half-height = focal length


# --- reading errors -------------------------------------------------------------------------


def _edit_json(folder: Path, **changes: object) -> None:
    path = folder / RESULT_JSON
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_newer_version_is_refused_with_upgrade_hint(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    _edit_json(out, version=RESULT_VERSION + 1)
    with pytest.raises(ResultFileError, match="newer ganfit.*upgrade") as info:
        read_result(out)
    assert isinstance(info.value, GanfitError) and "\n" not in str(info.value)


@pytest.mark.parametrize("version", [0, "1", 1.0, None, True])
def test_malformed_version_is_refused(
    tmp_path: Path, recon: Reconstruction, version: object
) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    _edit_json(out, version=version)
    with pytest.raises(ResultFileError, match="damaged"):
        read_result(out)


def test_foreign_format_is_refused(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    _edit_json(out, format="something-else")
    with pytest.raises(ResultFileError, match="not a ganfit result"):
        read_result(out)


def test_unknown_keys_are_ignored(tmp_path: Path, recon: Reconstruction) -> None:
    """Additive changes keep the version: an older reader must accept newer optional keys."""
    out = write_result(recon, tmp_path / "out", exports=False)
    _edit_json(out, future_field={"x": 1})
    assert_same(recon, read_result(out), skip=("created",))


@pytest.mark.parametrize("name", [MESH_NPZ, TEXTURE_PNG, PREVIEW_PNG])
def test_missing_file_is_named(tmp_path: Path, recon: Reconstruction, name: str) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    (out / name).unlink()
    with pytest.raises(ResultFileError, match=f"{name}: missing"):
        read_result(out)


def test_missing_or_damaged_json(tmp_path: Path, recon: Reconstruction) -> None:
    with pytest.raises(ResultFileError, match="no such result folder"):
        read_result(tmp_path / "nowhere")
    out = write_result(recon, tmp_path / "out", exports=False)
    (out / RESULT_JSON).write_text("{ not json")
    with pytest.raises(ResultFileError, match="damaged"):
        read_result(out)
    (out / RESULT_JSON).unlink()
    with pytest.raises(ResultFileError, match="not a ganfit result folder"):
        read_result(out)


def test_damaged_arrays(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    np.savez(out / MESH_NPZ, vertices=recon.vertices)
    with pytest.raises(ResultFileError, match="arrays missing"):
        read_result(out)
    (out / MESH_NPZ).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ResultFileError, match="damaged"):
        read_result(out)


def test_files_map_cannot_point_outside_the_folder(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    doc = json.loads((out / RESULT_JSON).read_text())
    doc["files"]["texture"] = "../secret.png"
    (out / RESULT_JSON).write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match="not a file name"):
        read_result(out)


# --- existing output, force -----------------------------------------------------------------


def test_existing_folder_needs_force(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out", exports=False)
    with pytest.raises(OutputError) as info:
        write_result(synthetic_reconstruction(seed=1), out)
    assert (
        str(info.value)
        == f"{out}{os.sep}: already exists; pass --force to replace it or choose another folder"
    )
    with pytest.raises(OutputError, match="already exists"):
        check_output_folder(out)
    check_output_folder(out, force=True)
    assert_same(recon, read_result(out), skip=("created",))

    newer = synthetic_reconstruction(seed=1)
    write_result(newer, out, force=True)
    assert_same(newer, read_result(out), skip=("created",))
    assert siblings(tmp_path) == ["out"]  # the old folder is gone, no temporaries


def test_force_replaces_only_result_folders(tmp_path: Path, recon: Reconstruction) -> None:
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not a ganfit result folder"):
        write_result(recon, precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    with pytest.raises(OutputError, match="not a ganfit result folder"):
        check_output_folder(precious, force=True)

    empty = tmp_path / "empty"
    empty.mkdir()
    write_result(recon, empty, force=True, exports=False)
    assert (empty / RESULT_JSON).is_file()


def test_output_path_is_a_file(tmp_path: Path, recon: Reconstruction) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(OutputError, match="already exists"):
        write_result(recon, target)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_result(recon, target, force=True)
    assert target.read_text() == "x"


def test_parent_is_a_file(tmp_path: Path, recon: Reconstruction) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for target in (blocker / "out", blocker / "deeper" / "out"):
        with pytest.raises(OutputError, match="blocker: is a file, not a folder") as info:
            write_result(recon, target)
        assert "\n" not in str(info.value)
    assert siblings(tmp_path) == ["blocker"]


def test_read_only_parent(tmp_path: Path, recon: Reconstruction) -> None:
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip(
            "root (or Windows) ignores folder permissions; test_parent_is_a_file covers the refusal"
        )
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(
            OutputError, match="cannot write here.*choose a folder you can write to"
        ):
            write_result(recon, parent / "out")
        assert siblings(parent) == []
    finally:
        parent.chmod(0o755)


def test_missing_parents_are_created(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "a" / "b" / "out", exports=False)
    assert (out / RESULT_JSON).is_file()


# --- atomicity ------------------------------------------------------------------------------


class Boom(OSError):
    pass


def _fail_on_call(n: int, exc: BaseException, real):  # type: ignore[no-untyped-def]
    calls = {"count": 0}

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["count"] += 1
        if calls["count"] == n:
            raise exc
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("call", [1, 2])
def test_failing_png_writer_leaves_nothing(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch, call: int
) -> None:
    monkeypatch.setattr(
        result_module, "write_png", _fail_on_call(call, Boom("disk full"), result_module.write_png)
    )
    with pytest.raises(Boom):
        write_result(recon, tmp_path / "a" / "out")
    assert siblings(tmp_path) == []  # no out, no temporary, not even the parent we created


def test_full_disk_is_a_user_error(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(result_module, "write_png", _fail_on_call(1, full, result_module.write_png))
    with pytest.raises(OutputError, match="no space left"):
        write_result(recon, tmp_path / "out")
    assert siblings(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ganfit.io import export_gltf

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(export_gltf, "export_glb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_result(recon, tmp_path / "out")
    assert siblings(tmp_path) == []


@pytest.mark.parametrize("exc", [Boom("disk full"), KeyboardInterrupt()])
def test_failed_forced_write_keeps_the_old_result(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    out = write_result(recon, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(result_module, "write_png", _fail_on_call(2, exc, result_module.write_png))
    with pytest.raises(type(exc)):
        write_result(synthetic_reconstruction(seed=1), out, force=True)
    assert siblings(tmp_path) == ["out"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_same(recon, read_result(out), skip=("created",))


def test_failed_final_rename_puts_the_old_result_back(
    tmp_path: Path, recon: Reconstruction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap itself fails (after the old folder was moved aside): the old one comes back."""
    out = write_result(recon, tmp_path / "out", exports=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename = os.rename

    def rename(src, dst):  # type: ignore[no-untyped-def]
        if str(src).endswith(".partial"):
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write_result(synthetic_reconstruction(seed=1), out, force=True, exports=False)
    monkeypatch.undo()
    assert siblings(tmp_path) == ["out"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_atomic_file(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with atomic.atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(OutputError, match="already exists"):
        with atomic.atomic_file(target):
            pass
    with pytest.raises(Boom):
        with atomic.atomic_file(target, force=True) as tmp:
            tmp.write_text("half")
            raise Boom("x")
    assert target.read_text() == "one" and siblings(tmp_path) == ["x.txt"]
    with atomic.atomic_file(target, force=True) as tmp:
        tmp.write_text("two")
    assert target.read_text() == "two" and siblings(tmp_path) == ["x.txt"]


def test_published_folder_uses_the_umask(tmp_path: Path, recon: Reconstruction) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    umask = os.umask(0o022)
    try:
        out = write_result(recon, tmp_path / "out", exports=False)
    finally:
        os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o755
    assert ((out / RESULT_JSON).stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 48, 3)])
def test_png_encoder_round_trips_every_pixel(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    """encode_png is hand-written (one filter for every row); Pillow must read back the same
    pixels, whatever the size, and find nothing wrong with the file."""
    from PIL import Image

    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "image.png"
    result_module.write_png(image, path)
    with Image.open(path) as png:
        png.verify()
    assert np.array_equal(result_module.read_png(path), image)


def test_write_npz_reuses_deflated_members_only_for_the_same_bytes(tmp_path: Path) -> None:
    # write_npz remembers a reused member's deflated bytes by name and size: a different basis
    # of the same size must be deflated anew, and every archive must read back exactly.
    import zipfile

    rng = np.random.default_rng(3)
    basis = np.zeros((5, 40, 3), np.float32)
    basis[:, :8] = rng.normal(size=(5, 8, 3))
    other = basis.copy()
    other[2, 3, 1] += 1.0
    for index, deltas in enumerate((basis, basis, other, basis)):
        arrays = {"vertices": rng.normal(size=(40, 3)).astype(np.float32), "expression_deltas": deltas}
        path = tmp_path / f"{index}.npz"
        atomic.write_npz(path, arrays, level=1, stored=("vertices",), reuse=("expression_deltas",))
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
            kinds = {info.filename: info.compress_type for info in archive.infolist()}
        assert kinds == {"vertices.npy": zipfile.ZIP_STORED, "expression_deltas.npy": zipfile.ZIP_DEFLATED}
        with np.load(path, allow_pickle=False) as npz:
            assert sorted(npz.files) == ["expression_deltas", "vertices"]
            for name, value in arrays.items():
                assert npz[name].dtype == value.dtype and np.array_equal(npz[name], value)
