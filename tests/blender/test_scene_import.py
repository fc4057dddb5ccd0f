"""Build the extension, install it into real Blender, import a real engine result, check the scene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)
from mathutils import Vector  # noqa: E402

from .conftest import empty_scene  # noqa: E402


def to_blender(p) -> np.ndarray:
    x, y, z = np.asarray(p, dtype=np.float64).T
    return np.stack([x, -z, y], axis=-1)


@pytest.fixture(scope="module")
def imported(installed_addon: str, engine_result: Path) -> dict:
    """Import the engine's result into an empty file through the installed operator."""
    empty_scene()
    assert installed_addon in bpy.context.preferences.addons, "read_homefile disabled the add-on"
    assert bpy.ops.ganfit.import_result(directory=str(engine_result)) == {"FINISHED"}
    doc = json.loads((engine_result / "result.json").read_text())
    with np.load(engine_result / "head.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    collection = bpy.data.collections[f"GANFit {engine_result.name}"]
    by_type = {obj.type: obj for obj in collection.objects}
    return {"doc": doc, "arrays": arrays, "collection": collection, **by_type}


def test_collection_holds_head_light_camera(imported: dict) -> None:
    assert sorted(o.type for o in imported["collection"].objects) == ["CAMERA", "LIGHT", "MESH"]
    assert imported["collection"].name in bpy.context.scene.collection.children


def test_head_mesh_matches_result(imported: dict) -> None:
    mesh = imported["MESH"].data
    arrays, doc = imported["arrays"], imported["doc"]
    assert len(mesh.vertices) == doc["counts"]["vertices"] == len(arrays["neutral_vertices"])
    assert len(mesh.polygons) == doc["counts"]["faces"]
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    np.testing.assert_allclose(co.reshape(-1, 3), to_blender(arrays["neutral_vertices"]), atol=1e-6)
    smooth = np.empty(len(mesh.polygons), bool)
    mesh.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()
    assert len(mesh.uv_layers) == 1
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers[0].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), arrays["uvs"][arrays["uv_faces"]].reshape(-1, 2), atol=1e-6)


def test_shape_keys_are_the_fitted_expressions(imported: dict) -> None:
    obj, doc, arrays = imported["MESH"], imported["doc"], imported["arrays"]
    keys = obj.data.shape_keys.key_blocks
    assert keys[0].name == "Basis"
    assert [k.name for k in keys[1:]] == [e["name"] for e in doc["expressions"]]
    assert "jawOpen" in keys and "eyeBlinkLeft" in keys
    for key, expression in zip(keys[1:], doc["expressions"]):
        assert key.value == pytest.approx(expression["weight"], abs=1e-6)
        assert key.slider_min <= 0.0 and key.slider_max >= 1.0
    # the evaluated (shape-keyed) mesh is the fitted head
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph).to_mesh()
    co = np.empty(len(evaluated.vertices) * 3, np.float32)
    evaluated.vertices.foreach_get("co", co)
    np.testing.assert_allclose(co.reshape(-1, 3), to_blender(arrays["vertices"]), atol=2e-5)


def test_material_has_the_texture(imported: dict, engine_result: Path) -> None:
    material = imported["MESH"].active_material
    images = [n.image for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage"]
    assert len(images) == 1
    image = images[0]
    assert Path(bpy.path.abspath(image.filepath)).resolve() == (engine_result / "texture.png").resolve()
    assert tuple(image.size) == (imported["doc"]["texture"]["width"], imported["doc"]["texture"]["height"])
    assert image.colorspace_settings.name == "sRGB"  # colour data: the engine lights it in linear light
    assert bpy.context.scene.view_settings.view_transform != "Raw"  # the artist's, not changed by default


def test_light_and_world(imported: dict) -> None:
    light, doc = imported["LIGHT"], imported["doc"]["light"]
    np.testing.assert_allclose(np.array(light.location), to_blender(doc["position"]), atol=1e-6)
    assert light.data.type == "POINT"
    colour = np.array(doc["colour"])
    np.testing.assert_allclose(np.array(light.data.color), colour / colour.max(), atol=1e-6)
    falloff = next(n for n in light.data.node_tree.nodes if n.bl_idname == "ShaderNodeLightFalloff")
    link = falloff.outputs["Constant"].links[0]
    assert link.to_node.bl_idname == "ShaderNodeEmission"
    strength = light.data.energy * falloff.inputs["Strength"].default_value / (4 * math.pi**2)
    assert strength == pytest.approx(colour.max(), rel=1e-5)
    world = bpy.context.scene.world
    background = next(n for n in world.node_tree.nodes if n.bl_idname == "ShaderNodeBackground")
    np.testing.assert_allclose(np.array(background.inputs["Color"].default_value)[:3], doc["ambient"], atol=1e-6)


def test_camera_matches_fit(imported: dict) -> None:
    obj, cam = imported["CAMERA"], imported["doc"]["camera"]
    scene = bpy.context.scene
    assert scene.camera == obj
    assert obj.data.sensor_fit == "HORIZONTAL"
    assert obj.data.lens == pytest.approx(cam["focal"] * obj.data.sensor_width, rel=1e-6)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (cam["width"], cam["height"])
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), to_blender(cam["position"]), atol=1e-6)
    forward = obj.matrix_world.to_3x3() @ Vector((0, 0, -1))
    want = to_blender(cam["look_at"]) - to_blender(cam["position"])
    np.testing.assert_allclose(np.array(forward), want / np.linalg.norm(want), atol=1e-6)
    up = np.array(obj.matrix_world.to_3x3() @ Vector((0, 1, 0)))
    assert float(up @ to_blender(cam["up"])) > 0.99 * np.linalg.norm(cam["up"])
    # the photo as background image
    assert obj.data.show_background_images
    assert obj.data.background_images[0].image.size[:] == (cam["width"], cam["height"])


def test_projection_matches_engine_landmarks(imported: dict) -> None:
    """Model landmarks projected by Blender's camera land where the engine projected them."""
    from bpy_extras.object_utils import world_to_camera_view

    arrays, cam = imported["arrays"], imported["doc"]["camera"]
    scene = bpy.context.scene
    points = to_blender(arrays["vertices"][arrays["landmark_indices"]])
    pixels = []
    for p in points:
        ndc = world_to_camera_view(scene, imported["CAMERA"], Vector(p))
        pixels.append((ndc.x * cam["width"], (1 - ndc.y) * cam["height"]))
    error = np.linalg.norm(np.array(pixels) - arrays["landmarks_2d"], axis=1).mean()
    iod = np.linalg.norm(arrays["landmarks_2d"][36] - arrays["landmarks_2d"][45])
    # the fit's own error (from result.json) bounds what a faithful camera can reach
    assert error / iod == pytest.approx(imported["doc"]["landmarks"]["error_iod"], abs=1e-3)


def test_bad_folder_reports_and_builds_nothing(installed_addon: str, tmp_path: Path) -> None:
    empty_scene()
    before = {name: len(getattr(bpy.data, name)) for name in ("objects", "meshes", "images", "collections")}
    (tmp_path / "result.json").write_text('{"format": "ganfit-result", "version": 1, "files": {}}')
    with pytest.raises(RuntimeError, match="damaged"):
        bpy.ops.ganfit.import_result(directory=str(tmp_path))
    with pytest.raises(RuntimeError, match="no such result folder"):
        bpy.ops.ganfit.import_result(directory=str(tmp_path / "nowhere"))
    assert {name: len(getattr(bpy.data, name)) for name in before} == before


def test_failure_midway_leaves_nothing(installed_addon: str, engine_result: Path, monkeypatch) -> None:
    """An exception after the mesh and material exist removes everything already created."""
    import sys

    scene_import = sys.modules[installed_addon + ".scene_import"]
    empty_scene()
    before = {name: len(getattr(bpy.data, name)) for name in
              ("objects", "meshes", "images", "materials", "lights", "cameras", "worlds", "collections")}

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while building the camera")

    monkeypatch.setattr(scene_import, "_build_camera", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        bpy.ops.ganfit.import_result(directory=str(engine_result))
    assert {name: len(getattr(bpy.data, name)) for name in before} == before


# --- where the head lands (issue 18, item 2) ------------------------------------------------


def _box(obj) -> tuple[np.ndarray, np.ndarray]:
    bpy.context.view_layer.update()
    corners = np.array([list(obj.matrix_world @ Vector(c)) for c in obj.bound_box])
    return corners.min(axis=0), corners.max(axis=0)


def _overlap(a, b) -> bool:
    return bool(np.all(a[0] < b[1]) and np.all(b[0] < a[1]))


def test_heads_land_clear_of_the_cube_and_of_each_other(installed_addon: str, engine_result: Path) -> None:
    """A 0.24 m head used to land at the origin inside the default 2 m cube, and a second result
    on top of the first; now each lands clear, its camera and light moved with it."""
    import sys

    scene_import = sys.modules[f"{installed_addon}.scene_import"]
    empty_scene()
    alone = scene_import.import_result(bpy.context, engine_result)
    bpy.context.view_layer.update()
    reference = alone.camera.matrix_world.inverted() @ alone.head.matrix_world
    light_to_head = alone.head.matrix_world.inverted() @ alone.light.matrix_world

    bpy.ops.wm.read_homefile(use_empty=False)  # the startup file: cube, camera, light
    cube = bpy.data.objects["Cube"]
    first = scene_import.import_result(bpy.context, engine_result)
    second = scene_import.import_result(bpy.context, engine_result)
    assert first.offset.length > 1.0  # out of the 2 m cube
    assert not _overlap(_box(first.head), _box(cube))
    assert not _overlap(_box(second.head), _box(cube)) and not _overlap(_box(second.head), _box(first.head))
    # The cameras still see their heads exactly as the photo did; so do the lights.
    bpy.context.view_layer.update()
    for built in (first, second):
        np.testing.assert_allclose(np.array(built.camera.matrix_world.inverted() @ built.head.matrix_world),
                                   np.array(reference), atol=1e-5)
        np.testing.assert_allclose(np.array(built.head.matrix_world.inverted() @ built.light.matrix_world),
                                   np.array(light_to_head), atol=1e-5)
    # The first head is outside what the second camera sees beside its head.
    gap = _box(second.head)[0][0] - _box(first.head)[1][0]
    assert gap > 0.2, gap
    assert "head at (" in second.where() and f"{second.head.matrix_world.translation.x:.2f}" in second.where()
    empty_scene()
