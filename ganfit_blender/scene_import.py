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
from typing import Any, TypeVar

import bpy
from bpy.props import BoolProperty

from .expressions import FITTED_PROPERTY
import numpy as np
from mathutils import Matrix, Vector

from .result_reader import Float64Array, ResultData, model_to_blender, read_result

__all__ = ["ImportOptions", "ImportedScene", "SceneChangeProperties", "import_result", "import_result_data", "LIGHT_UNIT"]

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

    # The texture is always sRGB colour data and the light linear, as in the engine, so the
    # Standard view transform shows the engine's picture; True also sets the scene's view
    # transform to Standard. Off by default: an artist's scene keeps its colour management.
    match_engine_colour: bool = False
    set_world: bool = True  # ambient light as the scene's world colour
    set_scene_camera: bool = True  # make the fitted camera the scene camera and set the resolution
    place_apart: bool = True  # move the new rig clear of what the scene holds, and frame the view on it


class SceneChangeProperties:
    """``ImportOptions`` as Blender properties, written once for the Import operator and the
    Reconstruct panel's settings (a mixin: Blender collects annotations from base classes)."""

    # bpy.props functions are typed as returning None in fake-bpy-module; in Blender they
    # return the property definitions that these annotations declare.
    set_world: BoolProperty(  # type: ignore[valid-type]
        name="Ambient as world",
        description="Replace the scene's world with one of the fitted ambient colour (off: your world stays)",
        default=True,
    )
    set_scene_camera: BoolProperty(  # type: ignore[valid-type]
        name="Use fitted camera",
        description="Make the fitted camera the scene camera and set the render size to the photo's "
                    "(off: your camera and render size stay)",
        default=True,
    )
    match_engine_colour: BoolProperty(  # type: ignore[valid-type]
        name="Match engine colours",
        description=("Set the scene's view transform to Standard, which shows exactly the engine's own render "
                     "(off: your colour management, AgX or Filmic or Standard, stays)"),
        default=False,
    )
    place_apart: BoolProperty(  # type: ignore[valid-type]
        name="Place apart",
        description=("Move the head with its camera and light clear of the scene's objects and earlier "
                     "results, and frame the view on it; off: at the world origin, as the engine fitted it"),
        default=True,
    )

    def import_options(self) -> ImportOptions:
        return ImportOptions(match_engine_colour=bool(self.match_engine_colour), set_world=bool(self.set_world),
                             set_scene_camera=bool(self.set_scene_camera), place_apart=bool(self.place_apart))


@dataclass
class ImportedScene:
    """The datablocks one import created."""

    collection: bpy.types.Collection
    head: bpy.types.Object
    camera: bpy.types.Object
    light: bpy.types.Object
    material: bpy.types.Material
    world: bpy.types.World | None
    offset: Vector = field(default_factory=lambda: Vector((0.0, 0.0, 0.0)))  # where the rig was moved

    def where(self) -> str:
        """Where the head went, for the import's report."""
        at = self.head.location
        return f"head at ({at.x:.2f}, {at.y:.2f}, {at.z:.2f}) m"


_ID = TypeVar("_ID", bound=bpy.types.ID)
_Node = TypeVar("_Node", bound=bpy.types.Node)


@dataclass
class _Created:
    """Datablocks created so far, removed again (newest first) if the import fails."""

    items: list[tuple[Any, bpy.types.ID]] = field(default_factory=list)

    def add(self, collection: Any, block: _ID) -> _ID:
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
    context: bpy.types.Context, path: Path | str, options: ImportOptions = ImportOptions()
) -> ImportedScene:
    """Read the result folder at ``path`` and build it into ``context.scene``."""
    return import_result_data(context, read_result(path), options)


def import_result_data(
    context: bpy.types.Context, data: ResultData, options: ImportOptions = ImportOptions()
) -> ImportedScene:
    """Build an already-read result into ``context.scene``; all or nothing."""
    scene = context.scene
    if scene is None:
        raise RuntimeError("no scene to import into; open a scene first")
    created = _Created()
    try:
        built = _build(data, options, created)
        if options.place_apart:
            built.offset = place_apart(scene, built, data)
        _link(scene, built, data, options)
    except Exception:
        created.remove_all()
        raise
    if options.place_apart:
        frame_view(context, built.head)
    log.info("imported %s into scene %s, %s", data.folder, scene.name, built.where())
    return built


#: Custom property marking the live preview's datablocks (live_preview): the result replaces
#: the preview, so placing the result ignores it.
PREVIEW_PROPERTY = "ganfit_preview"
#: Step between the places tried for a new head, in metres (Blender units).
PLACE_STEP = 0.1
#: Room kept free around a head that has no camera to size it by (the live preview), in metres.
DEFAULT_CLEARANCE = 0.3


def _bounds(obj: bpy.types.Object) -> tuple[Vector, Vector]:
    """World-space axis-aligned bounds of an object's bounding box. An unparented object's own
    transform is used, not ``matrix_world``, which is stale until the scene is evaluated (an
    import that just moved an object, or two imports in one script)."""
    matrix = obj.matrix_basis if obj.parent is None else obj.matrix_world
    corners = [matrix @ Vector(corner) for corner in obj.bound_box]
    return (Vector([min(c[i] for c in corners) for i in range(3)]),
            Vector([max(c[i] for c in corners) for i in range(3)]))


def free_offset(scene: bpy.types.Scene, low: Vector, high: Vector, clearance: float,
                ignore: tuple[bpy.types.Object, ...] = ()) -> Vector:
    """The smallest move along +X that puts a box (``low``..``high``, grown by ``clearance`` on
    every side) clear of every mesh in the scene: a new head lands neither inside the default
    cube nor on an earlier head, and no earlier head shows up near it in its camera."""
    boxes = [_bounds(obj) for obj in scene.objects
             if obj.type == "MESH" and obj not in ignore and PREVIEW_PROPERTY not in obj.keys()]
    grow = Vector((clearance, clearance, clearance))
    low, high = low - grow, high + grow
    for step in range(100_000):
        shift = Vector((step * PLACE_STEP, 0.0, 0.0))
        a, b = low + shift, high + shift
        if not any(all(a[i] < hi[i] and lo[i] < b[i] for i in range(3)) for lo, hi in boxes):
            return shift
    return Vector((max((hi.x for _lo, hi in boxes), default=0.0) - low.x, 0.0, 0.0))


def place_apart(scene: bpy.types.Scene, built: ImportedScene, data: ResultData) -> Vector:
    """Move the head, its camera and its light together (so the camera still matches the
    photo) to a free spot. The room kept around the head is what its camera sees beside it."""
    cam = data.camera
    centre = data.vertices.mean(axis=0)
    distance = float(np.linalg.norm(np.asarray(cam.position) - centre))
    clearance = max(distance * 0.5 / max(float(cam.focal), 1e-3), DEFAULT_CLEARANCE)
    low, high = _bounds(built.head)
    offset = free_offset(scene, low, high, clearance, ignore=(built.head, built.camera, built.light))
    for obj in (built.head, built.camera, built.light):
        obj.location = obj.location + offset  # unparented: location is the world position
    return offset


def frame_view(context: bpy.types.Context, obj: bpy.types.Object) -> None:
    """Centre every 3D viewport on ``obj`` at a distance that shows it whole: a 0.24 m head
    was about 20 px across at the default zoom. No-op without a window (background mode)."""
    low, high = _bounds(obj)
    centre = (low + high) / 2
    size = max((high - low).length, 0.05)
    window_manager = context.window_manager
    for window in window_manager.windows if window_manager is not None else ():
        screen = window.screen
        for area in screen.areas if screen is not None else ():
            space = area.spaces.active
            if area.type == "VIEW_3D" and isinstance(space, bpy.types.SpaceView3D) and space.region_3d is not None:
                space.region_3d.view_location = centre
                space.region_3d.view_distance = size * 2.5
                area.tag_redraw()


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


def _link(scene: bpy.types.Scene, built: ImportedScene, data: ResultData, options: ImportOptions) -> None:
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
    view = scene.view_settings
    if options.match_engine_colour and view is not None:
        # The engine decodes the sRGB texture, lights it in linear light and encodes the sum
        # as sRGB: exactly Blender's Standard view transform, with no look or exposure.
        # fake-bpy types these enums as Literal['NONE']: their items come from the OCIO config
        view.view_transform = "Standard"  # type: ignore[assignment]
        view.look = "None"  # type: ignore[assignment]
        view.exposure = 0.0
        view.gamma = 1.0


def _node_tree(block: bpy.types.Material | bpy.types.World) -> bpy.types.ShaderNodeTree:
    """The block's shader nodes, switched on (always on from Blender 5.0, where ``use_nodes``
    is deprecated)."""
    if bpy.app.version < (5, 0, 0):
        block.use_nodes = True
    tree = block.node_tree
    if tree is None:
        raise RuntimeError(f"{block.name}: Blender made no shader node tree")
    return tree


def _node(tree: bpy.types.NodeTree, kind: type[_Node]) -> _Node:
    """The tree's first node of ``kind`` (the default nodes a new material, world or light has)."""
    found = next((n for n in tree.nodes if isinstance(n, kind)), None)
    if found is None:
        raise RuntimeError(f"{tree.name}: no {kind.__name__} node")
    return found


def _new_node(tree: bpy.types.NodeTree, kind: type[_Node]) -> _Node:
    """A new node of ``kind`` in ``tree`` (``kind.__name__`` is Blender's node id name)."""
    node = tree.nodes.new(kind.__name__)
    if not isinstance(node, kind):
        raise RuntimeError(f"{tree.name}: Blender made a {type(node).__name__}, not a {kind.__name__}")
    return node


def _connect(tree: bpy.types.NodeTree, source: bpy.types.Node, output: str | int, target: bpy.types.Node,
             input: str | int) -> None:
    """Link ``source``'s output socket to ``target``'s input socket, by name (the stubs type
    the node subclasses' socket collections as optional; Blender's nodes always have them)."""
    outputs: Any = source.outputs
    inputs: Any = target.inputs
    tree.links.new(outputs[output], inputs[input])


def _set_input(node: bpy.types.Node, name: str | int, value: Any) -> None:
    """Set an input socket's default value (the socket's class, and so the value's type,
    depends on the socket, which the stubs cannot know from its name)."""
    socket: Any = node.inputs[name]
    socket.default_value = value


def _build_head(name: str, data: ResultData, material: bpy.types.Material, created: _Created) -> bpy.types.Object:
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


def _build_material(name: str, data: ResultData, options: ImportOptions, created: _Created) -> bpy.types.Material:
    """Image texture -> Principled BSDF with no specular: a Lambertian albedo like the engine's."""
    image = created.add(bpy.data.images, bpy.data.images.load(str(data.texture_path), check_existing=False))
    image.name = f"{name} texture"
    if image.colorspace_settings is not None:
        # fake-bpy types this enum as Literal['NONE']: its items come from the OCIO config
        image.colorspace_settings.name = "sRGB"  # type: ignore[assignment]  # an albedo stored sRGB-encoded
    material = created.add(bpy.data.materials, bpy.data.materials.new(f"{name} face"))
    tree = _node_tree(material)
    bsdf = _node(tree, bpy.types.ShaderNodeBsdfPrincipled)
    _set_input(bsdf, "Specular IOR Level", 0.0)
    _set_input(bsdf, "Roughness", 1.0)
    tex = _new_node(tree, bpy.types.ShaderNodeTexImage)
    tex.image = image
    tex.interpolation = "Linear"  # the engine samples bilinearly, clamped at the border
    tex.extension = "EXTEND"
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    _connect(tree, tex, "Color", bsdf, "Base Color")
    if options.set_world:
        _add_unoccluded_ambient(tree, tex, bsdf, data)
    return material


#: How far the head's own occlusion of the ambient world is looked for (metres): the mouth
#: cavity, eye sockets and nostrils are all within a few centimetres.
SELF_OCCLUSION_DISTANCE = 0.1


def _add_unoccluded_ambient(tree: bpy.types.ShaderNodeTree, tex: bpy.types.ShaderNodeTexImage,
                            bsdf: bpy.types.ShaderNodeBsdfPrincipled, data: ResultData) -> None:
    """Give back the ambient light the head hides from itself (issue 18, item 8).

    The engine's ambient term is unoccluded (albedo * ambient everywhere); in Cycles the world
    that carries it is blocked by the head's own lips and mouth cavity, so on a smiling photo,
    whose fitted light is mostly ambient, the teeth rendered dark olive (the ambient colour,
    mostly occluded; measured on astronaut: the teeth matched the engine again with this
    term). An emission of albedo * ambient * (1 - AO), with AO from the head alone
    (``only_local``), adds back exactly the self-occluded share of a uniform world: other
    objects of the scene still shadow the head."""
    ao = _new_node(tree, bpy.types.ShaderNodeAmbientOcclusion)
    ao.only_local = True
    ao.samples = 8
    _set_input(ao, "Distance", SELF_OCCLUSION_DISTANCE)
    hidden = _new_node(tree, bpy.types.ShaderNodeMath)
    hidden.operation = "SUBTRACT"
    _set_input(hidden, 0, 1.0)
    _connect(tree, ao, "AO", hidden, 1)
    ambient = _new_node(tree, bpy.types.ShaderNodeMix)
    ambient.data_type = "RGBA"
    ambient.blend_type = "MULTIPLY"
    _set_input(ambient, "Factor", 1.0)
    _connect(tree, tex, "Color", ambient, 6)
    _set_input(ambient, 7, (*np.maximum(data.light.ambient, 0.0).tolist(), 1.0))
    scaled = _new_node(tree, bpy.types.ShaderNodeVectorMath)
    scaled.operation = "SCALE"
    _connect(tree, ambient, 2, scaled, 0)
    _connect(tree, hidden, 0, scaled, "Scale")
    emission = _new_node(tree, bpy.types.ShaderNodeEmission)
    _connect(tree, scaled, 0, emission, "Color")
    total = _new_node(tree, bpy.types.ShaderNodeAddShader)
    _connect(tree, bsdf, "BSDF", total, 0)
    _connect(tree, emission, "Emission", total, 1)
    # An output for Cycles only: the default output (all engines) keeps the plain BSDF, which is
    # what EEVEE, the viewport's Material Preview and the glTF/FBX exporters read, so the term
    # is never exported as an emissive texture that would make the head glow elsewhere.
    cycles_output = _new_node(tree, bpy.types.ShaderNodeOutputMaterial)
    cycles_output.target = "CYCLES"
    _connect(tree, total, "Shader", cycles_output, "Surface")
    for offset, node in enumerate((ao, hidden, ambient, scaled, emission, total, cycles_output)):
        node.location = (bsdf.location.x + 300 * (offset % 3), bsdf.location.y - 350 - 200 * (offset // 3))


def _build_light(name: str, data: ResultData, created: _Created) -> bpy.types.Object:
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
    if not isinstance(light_data, bpy.types.PointLight):
        raise RuntimeError(f"Blender made a {type(light_data).__name__}, not a point light")
    light_data.color = tuple(colour / peak) if peak > 0 else (1.0, 1.0, 1.0)
    light_data.energy = peak * LIGHT_UNIT * d0**2
    light_data.shadow_soft_size = 0.0  # a true point, as in the engine
    light_data.use_soft_falloff = False
    light_data.use_shadow = False  # the engine's Phong model casts no shadows
    light_data.use_nodes = True
    tree = light_data.node_tree
    if tree is None:
        raise RuntimeError(f"{light_data.name}: Blender made no light node tree")
    emission = _node(tree, bpy.types.ShaderNodeEmission)
    falloff = _new_node(tree, bpy.types.ShaderNodeLightFalloff)
    _set_input(falloff, "Strength", 1.0 / d0**2)
    falloff.location = (emission.location.x - 250, emission.location.y)
    _connect(tree, falloff, "Constant", emission, "Strength")
    obj = created.add(bpy.data.objects, bpy.data.objects.new(f"{name} light", light_data))
    obj.location = Vector(position.tolist())
    return obj


def camera_matrix(position: Float64Array, look_at: Float64Array, up: Float64Array) -> Matrix:
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


def _build_camera(name: str, data: ResultData, created: _Created) -> bpy.types.Object:
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


def _build_world(name: str, data: ResultData, created: _Created) -> bpy.types.World:
    """A world of the ambient colour: an unoccluded Lambertian point then receives
    albedo * ambient, the engine's ambient term (less in crevices, where Cycles occludes)."""
    world = created.add(bpy.data.worlds, bpy.data.worlds.new(f"{name} ambient"))
    background = _node(_node_tree(world), bpy.types.ShaderNodeBackground)
    ambient = np.maximum(data.light.ambient, 0.0)
    _set_input(background, "Color", (*ambient.tolist(), 1.0))
    _set_input(background, "Strength", 1.0)
    return world


def select_only(context: bpy.types.Context, obj: bpy.types.Object) -> None:
    """Make ``obj`` the only selected object and the active one (after import or for export)."""
    view_layer = context.view_layer
    if view_layer is None:
        return
    for other in view_layer.objects:
        other.select_set(other == obj)
    view_layer.objects.active = obj
