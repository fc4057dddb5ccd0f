"""Reconstruct Face in real Blender against the real engine (``python -m ganfit serve`` in a
child process, this test run's own interpreter): errors, a killed engine, Cancel, a Draft
reconstruction whose live preview mesh is replaced by the imported result, and each of the Mode
menu's three modes end to end. torch never loads in this (Blender's) process."""

from __future__ import annotations

import importlib
import json
import os
import signal
import types
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

from .conftest import empty_scene  # noqa: E402

_state: dict[str, int] = {}


@pytest.fixture(scope="module")
def addon(installed_addon: str):
    """The installed add-on's reconstruct module, its engine set to this interpreter."""
    bpy.context.preferences.addons[installed_addon].preferences.python_path = sys.executable
    module = sys.modules[f"{installed_addon}.reconstruct_op"]
    yield module
    module.EVENT_HOOKS.clear()
    module.shutdown_engine()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ganfit.io.samples import sample_photo  # numpy/matplotlib/skimage only

    cache = tmp_path_factory.mktemp("samples")
    out = {name: sample_photo(name, cache_dir=cache) for name in ("grace_hopper", "coffee")}
    assert "torch" not in sys.modules
    return out


def _reconstruct(photo: Path | str, preset: str = "FAST", device: str = "CPU", mode: str = "GANFIT") -> set[str]:
    settings = bpy.context.scene.ganfit_reconstruct
    settings.mode = mode
    settings.photo, settings.preset, settings.device, settings.live_mesh = str(photo), preset, device, True
    return bpy.ops.ganfit.reconstruct()


def _objects() -> list[str]:
    return sorted(o.name for o in bpy.data.objects)


def _preview_objects() -> list:
    return [o for o in bpy.data.objects if "ganfit_preview" in o.keys()]


def _nothing_left() -> bool:
    return _objects() == [] and len(bpy.data.meshes) == 0 and len(bpy.data.collections) == 0


class RecordingLayout:
    """Stands in for Blender's UILayout (which only exists while a window draws): records what
    a draw function puts in, and checks property names and operator ids the way Blender would."""

    def __init__(self, log: list | None = None) -> None:
        self.log: list = [] if log is None else log
        self.enabled = True

    def _child(self) -> "RecordingLayout":
        return RecordingLayout(self.log)

    box = row = column = lambda self, **kw: self._child()  # noqa: E731

    def prop(self, data, name: str, **kw) -> None:
        assert name in data.bl_rna.properties, f"no property {name!r} on {data}"
        self.log.append(("prop", name))
        if not self.enabled:  # greyed out, as Blender draws a disabled row
            self.log.append(("disabled", name))

    def operator(self, idname: str, **kw) -> None:
        module, _, name = idname.partition(".")
        assert hasattr(getattr(bpy.ops, module), name), f"no operator {idname}"
        self.log.append(("operator", idname))
        return types.SimpleNamespace()  # the operator's properties, as Blender's layout returns them

    def label(self, text: str = "", **kw) -> None:
        self.log.append(("label", text))

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))

    def template_icon(self, icon_value: int = 0, scale: float = 1.0) -> None:
        self.log.append(("icon", icon_value))


def test_panel_and_preferences_draw(addon, installed_addon: str, photos: dict[str, Path]) -> None:
    bpy.context.scene.ganfit_reconstruct.photo = str(photos["grace_hopper"])
    layout = RecordingLayout()
    addon.draw_panel(layout, bpy.context)
    assert {("prop", n) for n in ("photo", "mode", "preset", "device", "live_mesh")} <= set(layout.log)
    assert ("operator", "ganfit.reconstruct") in layout.log
    assert ("operator", "ganfit.reconstruct_cancel") not in layout.log
    assert not any(kind == "label" and "later" in text for kind, text in layout.log)

    class PrefsProxy:  # the real preferences, drawing into a RecordingLayout (theirs is read-only)
        def __init__(self, real, layout: RecordingLayout) -> None:
            self._real, self.layout = real, layout

        def __getattr__(self, name: str):
            return getattr(self._real, name)

    prefs = bpy.context.preferences.addons[installed_addon].preferences
    preferences = sys.modules[f"{installed_addon}.preferences"]
    recorded = RecordingLayout()
    preferences.GANFIT_AP_preferences.draw(PrefsProxy(prefs, recorded), bpy.context)
    assert ("prop", "python_path") in recorded.log and ("prop", "torch_build") in recorded.log
    assert ("operator", "ganfit.setup_backend") in recorded.log


def test_panel_settings_become_engine_options(addon, photos: dict[str, Path]) -> None:
    settings = bpy.context.scene.ganfit_reconstruct
    settings.preset, settings.device = "HIGH", "CUDA"
    assert addon.request_options(settings) == {"steps": 600, "lighting_steps": 160, "fit_steps": 150, "texture_size": 2048, "device": "cuda", "texture_source": "photo"}
    settings.preset, settings.device = "DEFAULT", "AUTO"
    assert addon.request_options(settings) == {"device": "auto", "texture_source": "photo"}
    settings.clean_texture = True
    assert addon.request_options(settings) == {"device": "auto", "texture_source": "photo", "clean_texture": True}
    settings.clean_texture = False
    assert [i.identifier for i in settings.bl_rna.properties["mode"].enum_items] == ["GANFIT", "FAST", "GANFIT++"]
    # each mode sends only what it uses: the engine refuses the rest
    try:
        settings.preset, settings.device = "HIGH", "CPU"
        settings.mode = "GANFIT++"
        assert addon.request_options(settings) == {"fit_steps": 50, "texture_size": 2048, "device": "cpu", "texture_source": "photo"}
        settings.mode = "FAST"
        assert addon.request_options(settings) == {"texture_size": 2048, "device": "cpu", "texture_source": "photo"}
        settings.preset = "DEFAULT"
        assert addon.request_options(settings) == {"device": "cpu", "texture_source": "photo"}
    finally:
        settings.mode, settings.preset, settings.device = "GANFIT", "DEFAULT", "AUTO"
    thumbnail = addon.photo_thumbnail(str(photos["grace_hopper"]))
    assert thumbnail is not None and max(thumbnail.image_size) > 0  # decoded (icons need a window)
    assert addon.photo_thumbnail(str(photos["grace_hopper"])) is thumbnail  # cached
    assert addon.photo_thumbnail("/no/such/photo.jpg") is None


def test_missing_photo_is_reported(addon, tmp_path: Path) -> None:
    empty_scene()
    with pytest.raises(RuntimeError, match="Photo not found"):
        _reconstruct(tmp_path / "nope.jpg")
    assert _objects() == []


def test_bad_interpreter_is_reported(addon, installed_addon: str, photos: dict[str, Path], tmp_path: Path) -> None:
    empty_scene()
    prefs = bpy.context.preferences.addons[installed_addon].preferences
    prefs.python_path = str(tmp_path / "no-python")
    try:
        with pytest.raises(RuntimeError, match="interpreter not found"):
            _reconstruct(photos["grace_hopper"])
    finally:
        prefs.python_path = sys.executable
    assert _objects() == []


def test_interpreter_without_ganfit(addon, installed_addon: str) -> None:
    engine_client = sys.modules[f"{installed_addon}.engine_client"]
    python = "/usr/bin/python3"
    if not Path(python).is_file() or subprocess.run([python, "-c", "import ganfit"], capture_output=True).returncode == 0:
        pytest.skip(f"needs a Python without ganfit at {python}")
    with pytest.raises(engine_client.EngineError, match="No module named 'ganfit'"):
        engine_client.check_python(python)
    client = engine_client.EngineClient(python)
    with pytest.raises(engine_client.EngineError, match="did not start.*No module named '?ganfit"):
        client.send({"type": "status", "id": "x"})
    assert not client.alive()


def test_no_face_is_reported(addon, photos: dict[str, Path]) -> None:
    empty_scene()
    with pytest.raises(RuntimeError, match="(?i)no face"):
        _reconstruct(photos["coffee"])
    assert _objects() == [] and len(bpy.data.meshes) == 0


def test_engine_killed_mid_way(addon, photos: dict[str, Path]) -> None:
    """Killed while the live preview shows: reported, and the preview is gone too."""
    empty_scene()
    meshes: list[int] = []

    def kill_on_second_mesh(event: dict) -> None:
        if event["type"] == "mesh":
            meshes.append(len(_preview_objects()))
            if len(meshes) == 2 and "killed" not in _state:
                client = addon.engine_client()
                _state["killed"] = client.pid
                os.kill(client.pid, signal.SIGKILL)

    addon.EVENT_HOOKS.append(kill_on_second_mesh)
    try:
        with pytest.raises(RuntimeError, match="engine stopped.*see .*engine.log"):
            _reconstruct(photos["grace_hopper"])
    finally:
        addon.EVENT_HOOKS.remove(kill_on_second_mesh)
    assert "killed" in _state
    assert meshes[:2] == [0, 1]  # the preview appeared with the first mesh event
    assert _nothing_left()
    assert not addon.engine_client().alive() and not addon.RUN.running


def test_cancel_button_stops_and_removes_the_preview(addon, photos: dict[str, Path]) -> None:
    """The panel's Cancel (``ganfit.reconstruct_cancel``) pressed while the preview shows."""
    empty_scene()
    pressed: list[float] = []

    def cancel_on_second_mesh(event: dict) -> None:
        if event["type"] == "mesh" and not pressed:
            if _preview_objects():
                layout = RecordingLayout()  # the panel while it runs: progress and Cancel
                addon.draw_panel(layout, bpy.context)
                assert ("operator", "ganfit.reconstruct_cancel") in layout.log
                assert ("operator", "ganfit.reconstruct") not in layout.log
                assert any(kind == "progress" and "landmarks" in text for kind, text in layout.log)
                assert bpy.ops.ganfit.reconstruct_cancel() == {"FINISHED"}
                pressed.append(time.monotonic())

    addon.EVENT_HOOKS.append(cancel_on_second_mesh)
    try:
        assert _reconstruct(photos["grace_hopper"]) == {"CANCELLED"}
    finally:
        addon.EVENT_HOOKS.remove(cancel_on_second_mesh)
    assert pressed and time.monotonic() - pressed[0] < 2.0
    assert _nothing_left() and not addon.RUN.running
    assert addon.engine_client().alive()  # cancelling keeps the engine for the next run


def test_fast_reconstruction_imports_head_camera_light(addon, installed_addon: str, photos: dict[str, Path]) -> None:
    """Runs after the kill test: the next reconstruction starts a fresh engine. The live
    preview appears early, follows the mesh events, and the imported head replaces it."""
    empty_scene()
    seen: list[tuple[str, int, int]] = []  # (event type, preview objects, preview vertices)
    last_preview: list[np.ndarray] = []

    def watch(event: dict) -> None:
        previews = _preview_objects()
        seen.append((event["type"], len(previews), len(previews[0].data.vertices) if previews else 0))
        if event["type"] == "done" and previews:
            co = np.empty(len(previews[0].data.vertices) * 3, dtype=np.float32)
            previews[0].data.vertices.foreach_get("co", co)
            last_preview.append(co.reshape(-1, 3))

    addon.EVENT_HOOKS.append(watch)
    try:
        assert _reconstruct(photos["grace_hopper"]) == {"FINISHED"}
    finally:
        addon.EVENT_HOOKS.remove(watch)
    client = addon.engine_client()
    assert client.alive()
    if "killed" in _state:
        assert client.pid != _state["killed"]
    collections = [c for c in bpy.data.collections if c.name.startswith("GANFit ")]
    assert len(collections) == 1
    by_type = {o.type: o for o in collections[0].objects}
    assert sorted(by_type) == ["CAMERA", "LIGHT", "MESH"]
    head = by_type["MESH"]
    assert len(head.data.shape_keys.key_blocks) == 1 + 52
    assert "jawOpen" in head.data.shape_keys.key_blocks
    assert bpy.context.scene.camera == by_type["CAMERA"]
    result = Path(head["ganfit_result"])
    assert (result / "result.json").is_file()
    assert "torch" not in sys.modules

    kinds = [kind for kind, _, _ in seen]
    assert kinds.count("topology") == 1 and kinds.count("mesh") >= 2 and kinds[-1] == "done"
    first_mesh = kinds.index("mesh")
    assert seen[first_mesh][1] == 0 and seen[first_mesh + 1][1] == 1  # built by the first mesh event
    assert seen[-1][1:] == (1, len(head.data.vertices))  # one preview, the head's vertex count, until done
    assert _preview_objects() == [] and not [c for c in bpy.data.collections if "ganfit_preview" in c.keys()]
    reader = importlib.import_module(f"{installed_addon}.result_reader")
    fitted = reader.model_to_blender(reader.read_result(result).vertices)
    # the last update is the fitted head (within 2 mm: stages after the last mesh event may refine it)
    assert np.linalg.norm(last_preview[0] - fitted, axis=1).mean() < 2e-3


def test_not_a_photo_is_reported_before_the_engine(addon, tmp_path: Path) -> None:
    """A non-image showed a blank thumbnail with no hint (issue 18, item 9)."""
    empty_scene()
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are notes, not a photo")
    assert addon.photo_problem(str(fake)).startswith("Not a photo")
    assert addon.photo_problem(str(tmp_path / "gone.jpg")) == "Photo not found"
    bpy.context.scene.ganfit_reconstruct.photo = str(fake)
    layout = RecordingLayout()
    addon.draw_panel(layout, bpy.context)
    assert any(entry[0] == "label" and "Not a photo" in str(entry) for entry in layout.log), layout.log
    with pytest.raises(RuntimeError, match="Not a photo"):
        _reconstruct(fake)
    assert _objects() == []


def test_several_photos_one_head_and_the_scene_left_as_it_was(addon, photos: dict[str, Path], tmp_path: Path) -> None:
    """Issue 18, items 5 and 3: the panel takes more photos of the same person (one thumbnail
    each) and fits them jointly; with its scene options off, the world, the scene camera, the
    render size and the colour management stay the artist's."""
    from PIL import Image

    empty_scene()
    scene = bpy.context.scene
    world = bpy.data.worlds.new("artist world")
    scene.world = world
    camera = bpy.data.objects.new("artist camera", bpy.data.cameras.new("artist camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = 1234, 567
    view_transform = scene.view_settings.view_transform
    assert view_transform != "Raw"

    mirrored = tmp_path / "grace_mirrored.png"
    Image.open(photos["grace_hopper"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    settings = scene.ganfit_reconstruct
    settings.more_photos.clear()
    assert bpy.ops.ganfit.add_photo() == {"FINISHED"}
    settings.more_photos[0].path = str(mirrored)
    settings.set_world = settings.set_scene_camera = False
    assert settings.match_engine_colour is False  # the default: the artist's colour management stays
    layout = RecordingLayout()
    addon.draw_panel(layout, bpy.context)
    assert ("prop", "path") in layout.log and ("operator", "ganfit.add_photo") in layout.log
    assert {("prop", n) for n in ("set_world", "set_scene_camera", "match_engine_colour")} <= set(layout.log)
    try:
        assert _reconstruct(photos["grace_hopper"]) == {"FINISHED"}
    finally:
        settings.more_photos.clear()
        settings.set_world = settings.set_scene_camera = True
    head = next(o for o in bpy.data.objects if o.type == "MESH" and "ganfit_result" in o.keys())
    result = json.loads((Path(head["ganfit_result"]) / "result.json").read_text())
    assert len(result["photos"]) == 2 and result["photos"][1].endswith("grace_mirrored.png")
    assert scene.world == world and scene.camera == camera
    assert (scene.render.resolution_x, scene.render.resolution_y) == (1234, 567)
    assert scene.view_settings.view_transform == view_transform


def test_texture_source_is_sent_and_blend_greys_clean_texture(addon, photos: dict[str, Path]) -> None:
    """The Texture menu (Blend first, the engine's default chosen) goes out as ``texture_source``;
    with Blend, Clean texture is greyed and not sent (the engine refuses the two together)."""
    settings = bpy.context.scene.ganfit_reconstruct
    items = settings.bl_rna.properties["texture_source"].enum_items
    assert [i.identifier for i in items] == ["BLEND", "PHOTO"]
    assert [i.name for i in items] == ["Blend", "Photo (keep hair)"]
    assert "non-commercial" in items["BLEND"].description and "texture model" in items["BLEND"].description
    from ganfit import protocol

    assert settings.texture_source == protocol.DEFAULT_TEXTURE_SOURCE.upper()
    settings.photo = str(photos["grace_hopper"])
    try:
        settings.texture_source, settings.clean_texture = "BLEND", True
        # (only the texture keys: earlier tests leave other settings, e.g. the device and a preset)
        options = addon.request_options(settings)
        assert options["texture_source"] == "blend" and "clean_texture" not in options
        layout = RecordingLayout()
        addon.draw_panel(layout, bpy.context)
        assert ("prop", "texture_source") in layout.log and ("disabled", "clean_texture") in layout.log
        assert ("disabled", "texture_source") not in layout.log
        settings.texture_source = "PHOTO"
        options = addon.request_options(settings)
        assert options["texture_source"] == "photo" and options["clean_texture"] is True
        layout = RecordingLayout()
        addon.draw_panel(layout, bpy.context)
        assert ("prop", "clean_texture") in layout.log and ("disabled", "clean_texture") not in layout.log
    finally:
        settings.property_unset("texture_source")
        settings.clean_texture = False


def test_panel_shows_what_each_mode_uses(addon, photos: dict[str, Path]) -> None:
    """Under the Quality menu a greyed line says what the preset runs in the chosen mode; Live
    mesh is greyed in fast mode, which has no fit to preview."""
    settings = bpy.context.scene.ganfit_reconstruct
    settings.photo, settings.preset = str(photos["grace_hopper"]), "FAST"
    drawn = {}
    try:
        for mode in ("GANFIT", "FAST", "GANFIT++"):
            settings.mode = mode
            layout = RecordingLayout()
            addon.draw_panel(layout, bpy.context)
            drawn[mode] = layout.log
    finally:
        settings.mode, settings.preset = "GANFIT", "DEFAULT"
    labels = {mode: [text for kind, text in log if kind == "label"] for mode, log in drawn.items()}
    assert "150 landmark, 20 lighting, 15 full-objective steps; 512 px texture" in labels["GANFIT"]
    assert "One network pass, no fitting steps; 512 px texture" in labels["FAST"]
    assert "Network pass, then 5 full-objective steps; 512 px texture" in labels["GANFIT++"]
    assert ("disabled", "live_mesh") in drawn["FAST"]
    assert ("disabled", "live_mesh") not in drawn["GANFIT"] and ("disabled", "live_mesh") not in drawn["GANFIT++"]
    for log in drawn.values():
        assert {("prop", n) for n in ("mode", "preset", "device", "texture_source", "clean_texture", "live_mesh")} <= set(log)


@pytest.mark.parametrize("mode", ["FAST", "GANFIT++", "GANFIT"])
def test_each_mode_reconstructs_and_imports(addon, installed_addon: str, photos: dict[str, Path], mode: str) -> None:
    """Issue 19: the Mode menu runs all three modes end to end through the real engine, each
    with the Draft preset (GANFit: 150 landmark, 20 lighting, 15 full-objective steps), and the
    same import builds the head, its material, camera and light from each result folder."""
    empty_scene()
    engine_mode = mode.lower()
    events: list[dict] = []
    addon.EVENT_HOOKS.append(events.append)
    started = time.monotonic()
    try:
        assert _reconstruct(photos["grace_hopper"], preset="FAST", mode=mode) == {"FINISHED"}
    finally:
        addon.EVENT_HOOKS.remove(events.append)
        bpy.context.scene.ganfit_reconstruct.mode = "GANFIT"
    seconds = time.monotonic() - started
    collections = [c for c in bpy.data.collections if c.name.startswith("GANFit ")]
    assert len(collections) == 1
    by_type = {o.type: o for o in collections[0].objects}
    assert sorted(by_type) == ["CAMERA", "LIGHT", "MESH"]
    head = by_type["MESH"]
    assert len(head.data.vertices) == 4538 and len(head.data.shape_keys.key_blocks) == 1 + 52
    result = Path(head["ganfit_result"])
    for name in ("result.json", "head.npz", "texture.png", "head.obj", "head.glb", "preview.png"):
        assert (result / name).is_file(), name
    images = [n.image for n in head.active_material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage"]
    assert len(images) == 1 and Path(bpy.path.abspath(images[0].filepath)).resolve() == (result / "texture.png").resolve()
    assert bpy.context.scene.camera == by_type["CAMERA"]
    assert _preview_objects() == []

    document = json.loads((result / "result.json").read_text())
    recorded = document["settings"]
    assert recorded["mode"] == engine_mode
    assert recorded["appearance"]["texture_size"] == 512
    if engine_mode == "ganfit":
        assert (recorded["landmark"]["steps"], recorded["appearance"]["steps"], recorded["joint"]["steps"]) == (150, 20, 15)
    elif engine_mode == "ganfit++":
        assert recorded["joint"]["steps"] == 5
    stages = {e.get("stage") for e in events if e.get("type") == "progress"}
    assert events[-1]["type"] == "done"
    if engine_mode == "fast":
        assert "fitting" not in stages and "landmarks" not in stages
        assert not [e for e in events if e.get("type") == "mesh"]  # nothing to preview: not asked for
    else:
        assert "fitting" in stages
        assert ("landmarks" in stages) == (engine_mode == "ganfit")
    assert "torch" not in sys.modules
    print(f"{mode}: {seconds:.1f} s in Blender")
