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
