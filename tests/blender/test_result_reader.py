"""The add-on's numpy-only reader agrees with the engine's ``ganfit.io.result`` (no torch)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ganfit.io.result import read_result as engine_read

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ganfit_blender"))
import result_reader  # noqa: E402  (bpy-free module of the add-on, imported on its own)

sys.path.pop(0)


def test_reader_agrees_with_engine(engine_result: Path) -> None:
    ours, theirs = result_reader.read_result(engine_result), engine_read(engine_result, load_images=False)
    for name in ("vertices", "neutral_vertices", "faces", "uvs", "uv_faces", "expression_deltas"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    assert ours.expression_names == theirs.expression_names
    np.testing.assert_array_equal(ours.expression_weights, theirs.expression_weights)
    for name in ("position", "look_at", "up"):
        np.testing.assert_allclose(getattr(ours.camera, name), getattr(theirs.camera, name))
    assert (ours.camera.focal, ours.camera.width, ours.camera.height) == (
        theirs.camera.focal, theirs.camera.width, theirs.camera.height)
    for name in ("position", "colour", "ambient"):
        np.testing.assert_allclose(getattr(ours.light, name), getattr(theirs.light, name))
    assert ours.texture_path == engine_result / "texture.png"
    assert ours.photo_path is not None and ours.photo_path.name == "grace_hopper.jpg"
    # the result.json path is accepted as well as the folder
    assert result_reader.read_result(engine_result / "result.json").folder == engine_result


def test_model_to_blender_is_the_gltf_rotation() -> None:
    np.testing.assert_array_equal(result_reader.model_to_blender([[1, 2, 3]]), [[1, -3, 2]])
    assert np.linalg.det(result_reader.MODEL_TO_BLENDER) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=2), "newer ganfit"),
        (lambda d: d.update(format="other"), "not a ganfit result"),
        (lambda d: d["files"].update(mesh="../head.npz"), "not a file name"),
        (lambda d: d["expressions"].pop(), "expression"),
    ],
)
def test_reader_refuses_bad_folders(engine_result: Path, tmp_path: Path, edit, message: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(engine_result, folder)
    doc = json.loads((folder / "result.json").read_text())
    edit(doc)
    (folder / "result.json").write_text(json.dumps(doc))
    with pytest.raises(result_reader.ResultError, match=message):
        result_reader.read_result(folder)


# --- whatever the folder holds, the reader raises ResultError (never a raw exception) ---------

from test_result_io import synthetic_reconstruction  # noqa: E402  (tests/ is on the path)
from test_result_safety import DAMAGED_PNGS, wrong_values  # noqa: E402

from ganfit.io.result import write_result  # noqa: E402


@pytest.fixture
def synthetic_result(tmp_path: Path) -> Path:
    """A small result folder written by the engine's writer (no fitting, no torch)."""
    return write_result(synthetic_reconstruction(), tmp_path / "out", exports=False)


@pytest.mark.parametrize("damage", sorted({*DAMAGED_PNGS, "bad-checksum"}))
@pytest.mark.parametrize("name", ["texture.png", "preview.png"])
def test_reader_refuses_damaged_pngs(synthetic_result: Path, name: str, damage: str) -> None:
    """Checked without decoding (the add-on may have no Pillow): Blender is never handed an
    empty, truncated, foreign or decompression-bomb file."""
    path = synthetic_result / name
    good = path.read_bytes()
    if damage == "bad-checksum":
        bad = bytearray(good)
        bad[-20] ^= 0xFF  # inside the last IDAT chunk
        path.write_bytes(bytes(bad))
    else:
        path.write_bytes(DAMAGED_PNGS[damage](good))
    with pytest.raises(result_reader.ResultError, match=f"{name}: damaged.*reconstruct again"):
        result_reader.read_result(synthetic_result)


def test_reader_refuses_deeply_nested_json(synthetic_result: Path) -> None:
    for text in ("[" * 100_000 + "]" * 100_000,
                 '{"format": "ganfit-result", "version": 1, "settings": '
                 + '{"x": ' * 100_000 + "{}" + "}" * 100_000 + "}"):
        (synthetic_result / "result.json").write_text(text)
        with pytest.raises(result_reader.ResultError, match="nested too deeply"):
            result_reader.read_result(synthetic_result)


def test_reader_refuses_a_huge_json_unread(synthetic_result: Path) -> None:
    with open(synthetic_result / "result.json", "r+b") as handle:
        handle.seek(result_reader.MAX_JSON_BYTES + 1)
        handle.write(b" ")
    with pytest.raises(result_reader.ResultError, match="too large"):
        result_reader.read_result(synthetic_result)


def test_reader_raises_only_result_error_for_any_wrong_value(synthetic_result: Path) -> None:
    """Each value of result.json replaced by each JSON type: a result or ResultError."""
    json_path = synthetic_result / "result.json"
    original = json.loads(json_path.read_text())
    raw: list[str] = []
    for path, value, doc in wrong_values(original):
        json_path.write_text(json.dumps(doc))
        try:
            result_reader.read_result(synthetic_result)
        except result_reader.ResultError:
            pass
        except Exception as exc:  # noqa: BLE001 - collected to report them all at once
            raw.append(f"{path} = {value!r}: {type(exc).__name__}: {exc}")
    assert raw == []


def test_reader_refuses_damaged_npz(synthetic_result: Path) -> None:
    good = (synthetic_result / "head.npz").read_bytes()
    for position in (60, 200, len(good) // 2):
        bad = bytearray(good)
        bad[position : position + 8] = b"\xff" * 8
        (synthetic_result / "head.npz").write_bytes(bytes(bad))
        with pytest.raises(result_reader.ResultError, match="damaged"):
            result_reader.read_result(synthetic_result)


def test_reader_test_run_has_no_torch() -> None:
    assert "torch" not in sys.modules
