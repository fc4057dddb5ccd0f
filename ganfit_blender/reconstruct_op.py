"""**Reconstruct face**: run the engine (``python -m ganfit serve``, a child process) on a photo
and import its result, in the mode the panel's Mode menu picks (GANFit, Fast-GANFit or GANFit++,
``modes``); the result folder and its import are the same for all three.

Invoked from the UI the operator is modal: a 0.1 s timer reads the engine's events, the
panel's progress bar, the window's progress cursor and the header show stage and step, Esc or
the panel's Cancel button stops it. With *Live mesh* on, a preview head (``live_preview``)
appears after the first fitting steps and moves as the fit goes on. Run from a script
(``bpy.ops.ganfit.reconstruct()`` calls ``execute``) it blocks until the engine's terminal
event. Both run the same steps, and no step waits: the engine starts on a thread
(``EngineClient.begin_start``) and the request is sent once it said ``ready``, so Blender's UI
never freezes while the engine starts (issue 18: every step stays under 0.1 s, measured by
tests/blender/test_engine_start.py). Either way the result enters the scene only on ``done``, through
``scene_import.import_result`` (all or nothing), and the preview is always removed, so a
failed, cancelled or crashed reconstruction leaves nothing behind.
"""

from __future__ import annotations

import atexit
import stat
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import bpy
import bpy.utils.previews
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from . import modes, result_reader, result_storage, scene_import
from .seam import protocol
from .engine_client import EngineClient, EngineError
from .live_preview import LivePreview, PreviewError
from .preferences import engine_python

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems

log = logging.getLogger(__name__)

#: Seconds a synchronous (script) reconstruction may take before it is cancelled.
SYNC_TIMEOUT = 1800.0
#: Seconds to wait for the engine's ``cancelled`` event before giving up on it.
CANCEL_GRACE = 5.0


#: Called with every event of the running job (before the operator handles it); for tests and
#: scripts that want to watch progress.
EVENT_HOOKS: list[Callable[[dict[str, Any]], None]] = []

_client: EngineClient | None = None
_photo_previews: bpy.utils.previews.ImagePreviewCollection | None = None  # photo thumbnails


@dataclass
class RunState:
    """The running reconstruction, shared by the operator and the panel (one at a time)."""

    job: str = ""
    status: str = ""
    fraction: float = 0.0
    cancel_requested: bool = False

    @property
    def running(self) -> bool:
        return bool(self.job)

    def reset(self) -> None:
        self.job, self.status, self.fraction, self.cancel_requested = "", "", 0.0, False


#: What the panel draws while a reconstruction runs.
RUN = RunState()


def engine_client(context: bpy.types.Context | None = None) -> EngineClient | None:
    """The add-on's engine client (created for the preferences' interpreter); None before the
    first reconstruction when ``context`` is None."""
    global _client
    if context is None:
        return _client
    python = engine_python(context)
    if not python:
        raise EngineError(
            "no engine Python found: click Set up backend in the GANFit add-on preferences, or set "
            "the interpreter that has ganfit installed there (or $GANFIT_PYTHON)"
        )
    if _client is not None and _client.python != python:
        _client.close()
        _client = None
    if _client is None:
        _client = EngineClient(python)
    return _client


def shutdown_engine() -> None:
    """Stop the engine process if one runs and remove its log folder (add-on unregister,
    Blender exit)."""
    global _client
    if _client is not None:
        try:
            _client.close()
        except Exception:  # noqa: BLE001 - at exit: never raise
            log.exception("engine shutdown failed")
        _client = None


atexit.register(shutdown_engine)


def photo_thumbnail(path: str) -> bpy.types.ImagePreview | None:
    """The photo's thumbnail (a ``bpy.utils.previews`` image preview, not a datablock, so the
    artist's file gains nothing); None when the file is missing. Reloaded when it changes."""
    if _photo_previews is None or not path:
        return None
    photo = Path(bpy.path.abspath(path))
    try:
        key = f"{photo}:{photo.stat().st_mtime_ns}"
    except OSError:
        return None
    if key not in _photo_previews:
        _photo_previews.load(key, str(photo), "IMAGE")
    return _photo_previews[key]


_photo_problems: dict[str, str | None] = {}  # photo_problem's answers by file version
#: File signatures of the photo formats the engine reads (Pillow): a file with none of them
#: is not a photo, and its thumbnail would be blank with no hint.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
                     b"MM\x00*")


def photo_problem(path: str) -> str | None:
    """Why ``path`` cannot be reconstructed from, in a few words; None when it looks like a photo.
    The panel asks on every redraw: the file's first bytes are read once per version of it."""
    if not path:
        return "No photo chosen"
    photo = Path(bpy.path.abspath(path))
    try:
        info = photo.stat()
    except OSError:
        return "Photo not found"
    if stat.S_ISDIR(info.st_mode):
        return "A folder, not a photo"
    key = f"{photo}:{info.st_mtime_ns}:{info.st_size}"
    if key not in _photo_problems:
        try:
            with open(photo, "rb") as handle:
                head = handle.read(16)
        except OSError:
            return "Photo not found"
        looks_like_photo = head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        _photo_problems[key] = None if looks_like_photo else "Not a photo: choose a JPEG, PNG, WebP, TIFF, BMP or GIF"
    return _photo_problems[key]


def chosen_photos(settings: Any) -> list[str]:
    """The photo and the further photos of the same person, in order, without empty entries."""
    return [p for p in [settings.photo, *(item.path for item in settings.more_photos)] if p]


def request_options(settings: Any) -> dict[str, Any]:
    """The protocol's ``options`` for the panel's settings: the quality preset as the chosen
    mode runs it (only options the mode uses: the engine refuses the others), device, texture
    source and texture cleaning (not with the blend: the engine refuses the two together)."""
    mode = modes.engine_mode(str(settings.mode))
    source = modes.engine_texture_source(str(settings.texture_source))
    options = {**modes.preset_options(mode, str(settings.preset)), "device": str(settings.device).lower(),
               "texture_source": source}
    if settings.clean_texture and modes.cleans_texture(source):
        options["clean_texture"] = True
    return options


def reconstruct_settings(context: bpy.types.Context) -> GANFIT_PG_reconstruct:
    """The scene's Reconstruct settings (``scene.ganfit_reconstruct``)."""
    scene = context.scene
    if scene is None:
        raise RuntimeError("no scene in this context")
    return cast(GANFIT_PG_reconstruct, scene.ganfit_reconstruct)  # type: ignore[attr-defined]  # registered here


#: The Quality menu's items per mode, built once: Blender keeps no reference to the strings a
#: dynamic enum's callback returns, so they must outlive the call.
_PRESET_ITEMS = {mode: modes.preset_items(mode) for mode in modes.MODES}


def _preset_items(self: Any, context: bpy.types.Context | None) -> list[tuple[str, str, str, int]]:
    """The Quality menu's items for the chosen mode (their tooltips say what each runs there)."""
    mode = modes.engine_mode(str(self.mode)) if self is not None else modes.DEFAULT_MODE
    return _PRESET_ITEMS[mode]


class GANFIT_PG_photo(bpy.types.PropertyGroup):
    """One more photo of the same person (paper 3.5)."""

    path: StringProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Photo", description="Another photo of the same person: all photos are fitted into one head",
        subtype="FILE_PATH",
    )


class GANFIT_PG_reconstruct(scene_import.SceneChangeProperties, bpy.types.PropertyGroup):
    """Reconstruct settings, stored on the scene (``scene.ganfit_reconstruct``)."""

    photo: StringProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Photo", description="Photo of one face (the largest face is used)", subtype="FILE_PATH"
    )
    more_photos: CollectionProperty(type=GANFIT_PG_photo)  # type: ignore[valid-type]  # fake-bpy: props return None
    mode: EnumProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Mode",
        description="How the head is found: by optimisation (GANFit), by the regression network in one "
                    "pass (Fast-GANFit), or by the network followed by a short fit (GANFit++)",
        items=modes.mode_items(),
        default=modes.DEFAULT_MODE.upper(),
    )
    preset: EnumProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Quality",
        description="Steps and texture size; what each preset runs depends on the mode",
        items=_preset_items,
        default=[identifier for identifier, _ in modes.PRESET_NAMES].index("DEFAULT"),
    )
    device: EnumProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Device",
        items=[
            ("AUTO", "Auto", "An NVIDIA GPU (CUDA) if the engine's PyTorch can use one, else an Apple GPU (MPS), else the CPU"),
            ("CPU", "CPU", "The processor: works everywhere"),
            ("CUDA", "NVIDIA GPU", "CUDA: needs PyTorch built with CUDA (the standard Linux build)"),
            ("MPS", "Apple GPU", "Metal (MPS) on Apple silicon Macs"),
        ],
        default="AUTO",
    )
    texture_source: EnumProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Texture",
        description="Where the head's colour comes from",
        items=modes.texture_source_items(),
        default=modes.DEFAULT_TEXTURE_SOURCE.upper(),
    )
    clean_texture: BoolProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Clean texture",
        description="Outside the face outline keep the photo only where it looks like skin: no background, hats "
                    "or hair on the ears, temples and scalp (the render over the photo then matches it a little less)",
        default=False,
    )
    live_mesh: BoolProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Live mesh",
        description="Show the head as it fits (a preview mesh, replaced by the result at the end); "
                    "GANFit and GANFit++ only: Fast-GANFit has no fit to show",
        default=True,
    )


class GANFIT_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a textured, lit, camera-matched head from the photo (Esc cancels)"""

    bl_idname = "ganfit.reconstruct"
    bl_label = "Reconstruct Face"
    bl_options = {"REGISTER"}

    _timer: bpy.types.Timer | None = None
    _job: str = ""
    _client: EngineClient | None = None
    _output: Path | None = None
    _cancel_at: float | None = None
    _preview: LivePreview | None = None
    _request: dict[str, Any] | None = None  # sent once the engine is ready

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if RUN.running:
            cls.poll_message_set("A reconstruction is running: cancel it or wait")
            return False
        return True

    # -- shared steps ----------------------------------------------------------------------
    def _start(self, context: bpy.types.Context) -> bool:
        settings = reconstruct_settings(context)
        if not settings.photo:
            self.report({"ERROR"}, "Choose a photo to reconstruct")
            return False
        photos = [Path(bpy.path.abspath(path)) for path in chosen_photos(settings)]
        for path in photos:
            problem = photo_problem(str(path))
            if problem is not None:
                self.report({"ERROR"}, f"{problem}: {path}")
                return False
        if len(set(photos)) != len(photos):
            self.report({"ERROR"}, "The same photo is chosen twice: remove one")
            return False
        photo = photos[0]
        mode = modes.engine_mode(str(settings.mode))
        live_mesh = bool(settings.live_mesh) and modes.fits(mode)  # fast mode has no fit to show
        try:
            client = engine_client(context)
            assert client is not None
            output = result_storage.new_result_folder(photo)
            job = uuid.uuid4().hex[:12]
            client.begin_start()  # returns at once; _step sends the request when it is ready
        except EngineError as exc:
            self.report({"ERROR"}, str(exc))
            return False
        self._request = {
            "type": "reconstruct", "id": job, "photos": [str(path) for path in photos], "output": str(output),
            "force": False, "mode": mode, "options": request_options(settings), "mesh_updates": live_mesh,
        }
        self._client, self._job, self._output, self._cancel_at = client, job, output, None
        self._preview = LivePreview(job) if live_mesh else None
        RUN.reset()
        RUN.job, RUN.status = job, "GANFit: starting the engine"
        return True

    def _step(self, context: bpy.types.Context) -> set[OperatorReturnItems] | None:
        """Handle the events that arrived; the operator's result once the job ended."""
        client = self._client
        assert client is not None
        if self._request is not None:
            return self._step_starting(client)
        if RUN.cancel_requested and self._cancel_at is None:
            self._cancel()
        dead = not client.alive() and client.reader_finished()  # before polling: no event lost
        for event in client.poll_events():
            if event.get("id") not in (self._job, None):
                continue
            for hook in list(EVENT_HOOKS):
                hook(event)
            kind = event.get("type")
            if kind == "progress":
                self._progress(event)
            elif kind in ("topology", "mesh"):
                self._show_mesh(context, event)
            elif kind == "done":
                self._drop_preview()
                return self._import(context, Path(str(event.get("result") or self._output)))
            elif kind == "cancelled":
                self._drop_preview()
                self.report({"WARNING"}, "Reconstruction cancelled")
                return {"CANCELLED"}
            elif kind == "error":
                self._drop_preview()
                self.report({"ERROR"}, f"GANFit: {event.get('message')}")
                return {"CANCELLED"}
            # any other type: a newer engine's event this add-on does not know; ignored
        if dead:
            self._drop_preview()
            detail = client.last_log_line()
            self.report({"ERROR"}, f"The engine stopped ({detail or 'no message'}); see {client.log_path}")
            return {"CANCELLED"}
        if self._cancel_at is not None and time.monotonic() - self._cancel_at > CANCEL_GRACE:
            self._drop_preview()
            self.report({"WARNING"}, "Reconstruction cancelled (the engine did not answer; it is restarted next time)")
            client.kill()
            return {"CANCELLED"}
        return None

    def _step_starting(self, client: EngineClient) -> set[OperatorReturnItems] | None:
        """While the engine starts: nothing, then the request once it is ready. Cancelling
        now leaves the engine starting for the next reconstruction."""
        if RUN.cancel_requested:
            self._request = None
            self.report({"WARNING"}, "Reconstruction cancelled")
            return {"CANCELLED"}
        try:
            if not client.start_finished():
                return None
            assert self._request is not None
            client.send(self._request)  # a few hundred bytes into the pipe of a ready engine
        except EngineError as exc:
            self._request = None
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self._request = None
        RUN.status = "GANFit: reconstructing"
        return None

    def _progress(self, event: dict[str, Any]) -> None:
        stage, step, total = str(event.get("stage")), int(event.get("step") or 0), int(event.get("total") or 0)
        # Each stage's share of the bar comes from the engine's protocol.py (seam.py), as the CLI's.
        RUN.fraction = protocol.progress_fraction(stage, step, total, default=RUN.fraction)
        RUN.status = f"GANFit: {stage} {step}/{total}"

    def _show_mesh(self, context: bpy.types.Context, event: dict[str, Any]) -> None:
        """Feed the live preview; a preview that fails is dropped, never the reconstruction."""
        preview, scene = self._preview, context.scene
        if preview is None or scene is None or self._cancel_at is not None:
            return
        try:
            if event["type"] == "topology":
                preview.topology(event)
            else:
                preview.update(scene, event)
        except (PreviewError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            log.warning("live preview off for this reconstruction: %s", exc)
            self._drop_preview()

    def _drop_preview(self) -> None:
        if self._preview is not None:
            self._preview.remove()
            self._preview = None

    def _import(self, context: bpy.types.Context, folder: Path) -> set[OperatorReturnItems]:
        options = reconstruct_settings(context).import_options()  # what it may change in the artist's scene
        try:
            built = scene_import.import_result(context, folder, options)
        except result_reader.ResultError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:  # a bug: the import already removed what it built
            log.exception("import of %s failed", folder)
            self.report({"ERROR"}, f"Import failed ({type(exc).__name__}: {exc}); see the system console")
            return {"CANCELLED"}
        scene_import.select_only(context, built.head)
        self.report({"INFO"}, f"Reconstructed {built.collection.name}: {built.where()} ({folder})")
        return {"FINISHED"}

    # -- script path -----------------------------------------------------------------------
    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        if not self._start(context):
            return {"CANCELLED"}
        deadline = time.monotonic() + SYNC_TIMEOUT
        try:
            while True:
                result = self._step(context)
                if result is not None:
                    return result
                if time.monotonic() > deadline and self._cancel_at is None:
                    self._cancel()
                time.sleep(0.05)
        finally:
            self._drop_preview()
            RUN.reset()

    # -- UI path ---------------------------------------------------------------------------
    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        wm = context.window_manager
        if wm is None or not self._start(context):
            return {"CANCELLED"}
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 1000)
        wm.modal_handler_add(self)
        self._show(context)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        if event.type == "ESC" and event.value == "PRESS" and self._cancel_at is None:
            RUN.cancel_requested = True
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        result = self._step(context)
        if result is None:
            self._show(context)
            return {"RUNNING_MODAL"}
        self._finish(context)
        return result

    def cancel(self, context: bpy.types.Context) -> None:  # Blender cancels the operator (e.g. file load)
        if self._cancel_at is None:
            self._cancel()
        self._finish(context)

    def _cancel(self) -> None:
        self._cancel_at = time.monotonic()
        RUN.status = "GANFit: cancelling..."
        self._drop_preview()
        try:
            if self._request is not None:  # not sent yet: the engine has nothing to cancel
                return
            if self._client is not None and self._client.alive():
                self._client.send({"type": "cancel", "id": self._job})
        except EngineError:
            pass

    def _show(self, context: bpy.types.Context) -> None:
        text = f"{RUN.status} (Esc cancels)"
        wm = context.window_manager
        if wm is not None:
            wm.progress_update(int(1000 * RUN.fraction))
            _redraw_sidebars(wm)
        if context.area is not None:
            context.area.header_text_set(text)
        if context.workspace is not None:
            context.workspace.status_text_set(text)

    def _finish(self, context: bpy.types.Context) -> None:
        self._drop_preview()
        RUN.reset()
        wm = context.window_manager
        if wm is not None:
            if self._timer is not None:
                wm.event_timer_remove(self._timer)
            wm.progress_end()
            _redraw_sidebars(wm)
        self._timer = None
        if context.area is not None:
            context.area.header_text_set(None)
        if context.workspace is not None:
            context.workspace.status_text_set(None)


class GANFIT_OT_reconstruct_cancel(bpy.types.Operator):
    """Stop the running reconstruction; nothing is added to the scene"""

    bl_idname = "ganfit.reconstruct_cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return RUN.running and not RUN.cancel_requested

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        RUN.cancel_requested = True  # the running operator's next step sends the cancel
        return {"FINISHED"}


class GANFIT_OT_add_photo(bpy.types.Operator):
    """Add another photo of the same person: all photos are fitted into one head (paper 3.5)"""

    bl_idname = "ganfit.add_photo"
    bl_label = "Add Photo of the Same Person"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        reconstruct_settings(context).more_photos.add()
        return {"FINISHED"}


class GANFIT_OT_remove_photo(bpy.types.Operator):
    """Remove this photo from the reconstruction"""

    bl_idname = "ganfit.remove_photo"
    bl_label = "Remove Photo"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    index: IntProperty(default=0, min=0)  # type: ignore[valid-type]  # fake-bpy: props return None

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        photos = reconstruct_settings(context).more_photos
        if self.index < len(photos):
            photos.remove(self.index)
        return {"FINISHED"}


def _draw_photo(layout: bpy.types.UILayout, data: Any, name: str) -> None:
    """One photo's field and its thumbnail, or a hint when it cannot be used."""
    path = getattr(data, name)
    problem = photo_problem(path) if path else None
    thumbnail = photo_thumbnail(path) if path and problem is None else None
    if thumbnail is not None and thumbnail.icon_id:
        layout.template_icon(icon_value=thumbnail.icon_id, scale=7.0)
    elif problem is not None:
        layout.label(text=problem, icon="ERROR")


def _redraw_sidebars(wm: bpy.types.WindowManager) -> None:
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The Reconstruct part of the GANFit sidebar panel."""
    settings = reconstruct_settings(context)
    box = layout.box()
    box.prop(settings, "photo")
    _draw_photo(box, settings, "photo")
    for index, item in enumerate(settings.more_photos):
        row = box.row(align=True)
        row.prop(item, "path", text=f"Photo {index + 2}")
        remove = row.operator(GANFIT_OT_remove_photo.bl_idname, text="", icon="X")
        remove.index = index
        _draw_photo(box, item, "path")
    box.operator(GANFIT_OT_add_photo.bl_idname, icon="ADD")
    mode = modes.engine_mode(str(settings.mode))
    box.prop(settings, "mode")
    box.prop(settings, "preset")
    summary = box.row()  # what the preset runs in this mode: steps a mode skips are not listed
    summary.enabled = False
    summary.label(text=modes.preset_summary(mode, str(settings.preset)))
    box.prop(settings, "device")
    box.prop(settings, "texture_source")
    clean = box.row()
    clean.enabled = modes.cleans_texture(modes.engine_texture_source(str(settings.texture_source)))
    clean.prop(settings, "clean_texture")  # greyed with Blend: it keeps only skin already
    live = box.row()
    live.enabled = modes.fits(mode)  # greyed in fast mode: no fit, nothing to preview
    live.prop(settings, "live_mesh")
    scene_box = box.column(heading="Change the scene")  # what the result may change beyond its collection
    scene_box.prop(settings, "set_world")
    scene_box.prop(settings, "set_scene_camera")
    scene_box.prop(settings, "match_engine_colour")
    scene_box.prop(settings, "place_apart")
    if RUN.running:
        box.progress(factor=RUN.fraction, type="BAR", text=RUN.status.removeprefix("GANFit: "))
        box.operator(GANFIT_OT_reconstruct_cancel.bl_idname, icon="CANCEL")
    else:
        box.operator(GANFIT_OT_reconstruct.bl_idname, icon="USER")


CLASSES = (GANFIT_PG_photo, GANFIT_PG_reconstruct, GANFIT_OT_reconstruct, GANFIT_OT_reconstruct_cancel,
           GANFIT_OT_add_photo, GANFIT_OT_remove_photo)


def register() -> None:
    global _photo_previews
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    # bpy.props functions are typed as returning None in fake-bpy; Blender returns a property.
    bpy.types.Scene.ganfit_reconstruct = PointerProperty(type=GANFIT_PG_reconstruct)  # type: ignore[attr-defined,func-returns-value]
    _photo_previews = bpy.utils.previews.new()


def unregister() -> None:
    global _photo_previews
    shutdown_engine()
    RUN.reset()
    if _photo_previews is not None:
        bpy.utils.previews.remove(_photo_previews)
        _photo_previews = None
    del bpy.types.Scene.ganfit_reconstruct  # type: ignore[attr-defined]  # registered above
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
