"""Export through Blender's own glTF and FBX exporters keeps the expression shape keys."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

from .conftest import empty_scene  # noqa: E402


@pytest.fixture(scope="module")
def head(installed_addon: str, engine_result: Path):
    empty_scene()
    assert bpy.ops.ganfit.import_result(directory=str(engine_result)) == {"FINISHED"}
    return bpy.context.view_layer.objects.active


def test_glb_has_52_morph_targets_and_the_texture(head, tmp_path: Path) -> None:
    out = tmp_path / "head.glb"
    assert bpy.ops.ganfit.export_head(filepath=str(out), format="GLB") == {"FINISHED"}
    data = out.read_bytes()
    assert data[:4] == b"glTF"
    length = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20 : 20 + length])
    meshes = doc["meshes"]
    assert len(meshes) == 1
    primitive = meshes[0]["primitives"][0]
    assert len(primitive["targets"]) == 52
    assert meshes[0]["extras"]["targetNames"][:3] == [k.name for k in head.data.shape_keys.key_blocks[1:4]]
    assert doc.get("images"), "the texture is embedded"
    # The texture is the base colour only: the Cycles-only self-occlusion term must not be
    # exported as an emissive texture (the head would glow in every other application).
    (material,) = doc["materials"]
    assert "baseColorTexture" in material["pbrMetallicRoughness"]
    assert "emissiveTexture" not in material and not any(material.get("emissiveFactor", [0, 0, 0]))


def test_fbx_is_written(head, tmp_path: Path) -> None:
    out = tmp_path / "head.fbx"
    assert bpy.ops.ganfit.export_head(filepath=str(out), format="FBX") == {"FINISHED"}
    data = out.read_bytes()
    assert data.startswith(b"Kaydara FBX Binary")
    assert b"jawOpen" in data  # blend shape channels carry the ARKit names


def test_missing_folder_is_reported(head, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.ganfit.export_head(filepath=str(tmp_path / "nope" / "head.glb"), format="GLB")
