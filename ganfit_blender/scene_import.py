"""Build a Blender scene from a ganfit result: head with expression shape keys, material,
light, world (ambient) and the fitted camera.

Everything is built first and only then linked into the scene and made active; if any step
fails, every datablock created so far is removed again, so a failed import leaves nothing
behind (docs/blender.md explains the choices that make Cycles match the engine's render).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from .expressions import FITTED_PROPERTY
import numpy as np
from mathutils import Matrix, Vector

from .result_reader import ResultData, model_to_blender, read_result

__all__ = ["ImportOptions", "ImportedScene", "import_result", "import_result_data", "LIGHT_UNIT"]

log = logging.getLogger(__name__)

#: A Cycles point light of power P (watts) with a Constant light falloff of strength S makes a
#: Lambertian surface of albedo a, lit at angle theta, leave with radiance
#: a * P * S * cos(theta) / LIGHT_UNIT, where LIGHT_UNIT = 4 pi^2 (measured in Blender 5.0 and
#: derived from P / (4 pi) W/sr and the diffuse BRDF a / pi). The engine's term is
#: a * colour * cos(theta), so P * S = colour * LIGHT_UNIT.
LIGHT_UNIT = 4.0 * math.pi**2

#: Sensor width in mm of the imported camera (Blender's default); lens = focal * this.
SENSOR_WIDTH_MM = 36.0


@dataclass(frozen=True)
class ImportOptions:
    """What the import changes beyond its own collection."""

    match_engine_colour: bool = True  # texture as Non-Color data and the scene's view transform Raw
    set_world: bool = True  # ambient light as the scene's world colour
    set_scene_camera: bool = True  # make the fitted camera the scene camera and set the resolution


@dataclass
class ImportedScene:
    """The datablocks one import created."""

    collection: Any
    head: Any
    camera: Any
    light: Any
    material: Any
    world: Any | None


@dataclass
class _Created:
    """Datablocks created so far, removed again (newest first) if the import fails."""

    items: list[tuple[Any, Any]] = field(default_factory=list)

    def add(self, collection: Any, block: Any) -> Any:
        self.items.append((collection, block))
        return block

    def remove_all(self) -> None:
        for collection, block in reversed(self.items):
            try:
                collection.remove(block)
            except (ReferenceError, RuntimeError) as exc:  # already gone with its owner
                log.debug("cleanup: %s", exc)
        self.items.clear()


def import_result(
    context: Any, path: Path | str, options: ImportOptions = ImportOptions()
) -> ImportedScene:
    """Read the result folder at ``path`` and build it into ``context.scene``."""
    return import_result_data(context, read_result(path), options)


def import_result_data(context: Any, data: ResultData, options: ImportOptions = ImportOptions()) -> ImportedScene:
    """Build an already-read result into ``context.scene``; all or nothing."""
    created = _Created()
    try:
        built = _build(data, options, created)
        _link(context.scene, built, data, options)
    except Exception:
        created.remove_all()
        raise
    log.info("imported %s into scene %s", data.folder, context.scene.name)
    return built


def _build(data: ResultData, options: ImportOptions, created: _Created) -> ImportedScene:
    name = data.name
    collection = created.add(bpy.data.collections, bpy.data.collections.new(f"GANFit {name}"))
    material = _build_material(name, data, options, created)
    head = _build_head(name, data, material, created)
    light = _build_light(name, data, created)
    camera = _build_camera(name, data, created)
    world = _build_world(name, data, created) if options.set_world else None
    for obj in (head, light, camera):
        collection.objects.link(obj)
        obj["ganfit_result"] = str(data.folder)
    collection["ganfit_result"] = str(data.folder)
    return ImportedScene(collection, head, camera, light, material, world)


def _link(scene: Any, built: ImportedScene, data: ResultData, options: ImportOptions) -> None:
    """The only step that touches the user's scene: simple assignments, after all is built."""
    scene.collection.children.link(built.collection)
    if built.world is not None:
        scene.world = built.world
    if options.set_scene_camera:
        scene.camera = built.camera
        scene.render.resolution_x = data.camera.width
        scene.render.resolution_y = data.camera.height
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    if options.match_engine_colour:
        # The engine multiplies the texture's stored values by the shading and writes the
        # product straight to the image: no colour transform on either side.
        scene.view_settings.view_transform = "Raw"
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0


def _use_nodes(block: Any) -> None:
    """Node trees are always on from Blender 5.0 (``use_nodes`` is deprecated there)."""
    if bpy.app.version < (5, 0, 0):
        block.use_nodes = True


def _build_head(name: str, data: ResultData, material: Any, created: _Created) -> Any:
    """The neutral head with UVs, smooth shading and one shape key per expression."""
    mesh = created.add(bpy.data.meshes, bpy.data.meshes.new(f"{name} head"))
    neutral = model_to_blender(data.neutral_vertices)
    faces = data.faces.astype(np.int64)
    n_faces = len(faces)
    mesh.vertices.add(len(neutral))
    mesh.vertices.foreach_set("co", neutral.astype(np.float32).ravel())
    mesh.loops.add(n_faces * 3)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(n_faces)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(n_faces, 3, dtype=np.int32))
    uv_layer = mesh.uv_layers.new(name="UVMap")
    uv_layer.data.foreach_set("uv", data.uvs[data.uv_faces].astype(np.float32).ravel())
    mesh.update(calc_edges=True)
    problems = mesh.validate(verbose=False)
    if problems:
        log.warning("%s: Blender corrected the mesh (degenerate or duplicate faces)", name)
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), dtype=bool))
    mesh.materials.append(material)

    obj = created.add(bpy.data.objects, bpy.data.objects.new(f"{name} head", mesh))
    if len(mesh.vertices) != len(neutral):
        raise RuntimeError(f"{name}: the mesh lost vertices on import; the result may be damaged")
    obj.shape_key_add(name="Basis", from_mix=False)
    for index, (key_name, weight) in enumerate(zip(data.expression_names, data.expression_weights)):
        key = obj.shape_key_add(name=key_name, from_mix=False)
        shaped = model_to_blender(data.neutral_vertices + data.expression_deltas[index])
        key.data.foreach_set("co", shaped.astype(np.float32).ravel())
        key.slider_min = min(0.0, float(weight))
        key.slider_max = max(1.0, float(weight))
        key.value = float(weight)
    if mesh.shape_keys is not None:
        mesh.shape_keys.name = f"{name} expressions"  # freed with the mesh on cleanup
    # The fitted weights, for the panel's "Fitted" button after the artist moved the sliders.
    obj[FITTED_PROPERTY] = {n: float(w) for n, w in zip(data.expression_names, data.expression_weights)}
    return obj


def _build_material(name: str, data: ResultData, options: ImportOptions, created: _Created) -> Any:
    """Image texture -> Principled BSDF with no specular: a Lambertian albedo like the engine's."""
    image = created.add(bpy.data.images, bpy.data.images.load(str(data.texture_path), check_existing=False))
    image.name = f"{name} texture"
    image.colorspace_settings.name = "Non-Color" if options.match_engine_colour else "sRGB"
    material = created.add(bpy.data.materials, bpy.data.materials.new(f"{name} face"))
    _use_nodes(material)
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Specular IOR Level"].default_value = 0.0
    bsdf.inputs["Roughness"].default_value = 1.0
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"  # the engine samples bilinearly, clamped at the border
    tex.extension = "EXTEND"
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def _build_light(name: str, data: ResultData, created: _Created) -> Any:
    """The fitted point light, without distance falloff in Cycles.

    Cycles: a Light Falloff node (Constant) removes the 1/d^2 falloff. Its strength is 1/d0^2
    and the power colour * LIGHT_UNIT * d0^2, with d0 the light's distance to the head's
    centre, so EEVEE (which ignores light nodes and keeps 1/d^2) is right at the head's centre.
    """
    light = data.light
    colour = np.maximum(light.colour, 0.0)
    peak = float(colour.max())
    position = model_to_blender(light.position)
    centre = model_to_blender(data.vertices.mean(axis=0))
    d0 = max(float(np.linalg.norm(position - centre)), 1e-3)
    light_data = created.add(bpy.data.lights, bpy.data.lights.new(f"{name} light", "POINT"))
    light_data.color = tuple(colour / peak) if peak > 0 else (1.0, 1.0, 1.0)
    light_data.energy = peak * LIGHT_UNIT * d0**2
    light_data.shadow_soft_size = 0.0  # a true point, as in the engine
    light_data.use_soft_falloff = False
    light_data.use_shadow = False  # the engine's Phong model casts no shadows
    light_data.use_nodes = True
    tree = light_data.node_tree
    emission = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeEmission")
    falloff = tree.nodes.new("ShaderNodeLightFalloff")
    falloff.inputs["Strength"].default_value = 1.0 / d0**2
    falloff.location = (emission.location.x - 250, emission.location.y)
    tree.links.new(falloff.outputs["Constant"], emission.inputs["Strength"])
    obj = created.add(bpy.data.objects, bpy.data.objects.new(f"{name} light", light_data))
    obj.location = Vector(position)
    return obj


def camera_matrix(position: np.ndarray, look_at: np.ndarray, up: np.ndarray) -> Matrix:
    """Camera-to-world matrix in Blender space (the camera looks down its -Z, +Y up) from
    model-space position, look-at point and up vector."""
    eye, target, up_b = (model_to_blender(v) for v in (position, look_at, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up_b)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    matrix = Matrix.Identity(4)
    for row in range(3):
        matrix[row][0] = right[row]
        matrix[row][1] = cam_up[row]
        matrix[row][2] = -forward[row]
        matrix[row][3] = eye[row]
    return matrix


def _build_camera(name: str, data: ResultData, created: _Created) -> Any:
    """The fitted pinhole camera, with the photo as its background image when it is found."""
    cam = data.camera
    cam_data = created.add(bpy.data.cameras, bpy.data.cameras.new(f"{name} camera"))
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.sensor_width = SENSOR_WIDTH_MM
    cam_data.lens = cam.focal * SENSOR_WIDTH_MM
    cam_data.shift_x = cam_data.shift_y = 0.0
    cam_data.clip_start = 0.01
    cam_data.clip_end = 100.0
    if data.photo_path is not None:
        photo = created.add(bpy.data.images, bpy.data.images.load(str(data.photo_path), check_existing=False))
        background = cam_data.background_images.new()
        background.image = photo
        background.alpha = 1.0
        background.display_depth = "BACK"
        cam_data.show_background_images = True
    obj = created.add(bpy.data.objects, bpy.data.objects.new(f"{name} camera", cam_data))
    obj.matrix_world = camera_matrix(cam.position, cam.look_at, cam.up)
    return obj


def _build_world(name: str, data: ResultData, created: _Created) -> Any:
    """A world of the ambient colour: an unoccluded Lambertian point then receives
    albedo * ambient, the engine's ambient term (less in crevices, where Cycles occludes)."""
    world = created.add(bpy.data.worlds, bpy.data.worlds.new(f"{name} ambient"))
    _use_nodes(world)
    background = next(n for n in world.node_tree.nodes if n.bl_idname == "ShaderNodeBackground")
    ambient = np.maximum(data.light.ambient, 0.0)
    background.inputs["Color"].default_value = (*ambient.tolist(), 1.0)
    background.inputs["Strength"].default_value = 1.0
    return world


def select_only(context: Any, obj: Any) -> None:
    """Make ``obj`` the only selected object and the active one (after import or for export)."""
    for other in context.view_layer.objects:
        other.select_set(other == obj)
    context.view_layer.objects.active = obj
