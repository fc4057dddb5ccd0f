"""**Reconstruct face**: run the engine (``python -m ganfit serve``, a child process) on a photo
and import its result.

Invoked from the UI the operator is modal: a 0.1 s timer reads the engine's events, the
window's progress bar and the header show stage and step, Esc cancels. Run from a script
(``bpy.ops.ganfit.reconstruct()`` calls ``execute``) it blocks until the engine's terminal event.
Either way the scene changes only on ``done``, through ``scene_import.import_result`` (all or
nothing), so a failed, cancelled or crashed reconstruction leaves no objects behind.
"""

from __future__ import annotations

import atexit
import logging
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, PointerProperty, StringProperty

from . import result_reader, scene_import
from .engine_client import EngineClient, EngineError, detect_python

log = logging.getLogger(__name__)

#: Engine options per quality preset ("DEFAULT": the engine's own defaults).
PRESETS: dict[str, dict[str, int]] = {
    "FAST": {"steps": 150, "lighting_steps": 20, "texture_size": 512},
    "DEFAULT": {},
}

#: Seconds a synchronous (script) reconstruction may take before it is cancelled.
SYNC_TIMEOUT = 1800.0
#: Seconds to wait for the engine's ``cancelled`` event before giving up on it.
CANCEL_GRACE = 5.0

#: Called with every event of the running job (before the operator handles it); for tests and
#: scripts that want to watch progress.
EVENT_HOOKS: list[Callable[[dict[str, Any]], None]] = []

_client: EngineClient | None = None
_detected_python: str | None = None


def engine_python(context: Any) -> str:
    """The interpreter from the add-on preferences, else the detected one ("" when none)."""
    global _detected_python
    addon = context.preferences.addons.get(__package__)
    path = str(getattr(addon.preferences, "python_path", "") or "") if addon is not None else ""
    if path:
        return bpy.path.abspath(path)
    if _detected_python is None:
        _detected_python = detect_python()
    return _detected_python


def engine_client(context: Any = None) -> EngineClient | None:
    """The add-on's engine client (created for the preferences' interpreter); None before the
    first reconstruction when ``context`` is None."""
    global _client
    if context is None:
        return _client
    python = engine_python(context)
    if not python:
        raise EngineError(
            "no engine Python found: set the interpreter that has ganfit installed in the GANFit "
            "add-on preferences (or the GANFIT_PYTHON environment variable)"
        )
    if _client is not None and _client.python != python:
        _client.shutdown()
        _client = None
    if _client is None:
        _client = EngineClient(python)
    return _client


def shutdown_engine() -> None:
    """Stop the engine process if one runs (add-on unregister, Blender exit)."""
    global _client
    if _client is not None:
        try:
            _client.shutdown()
        except Exception:  # noqa: BLE001 - at exit: never raise
            log.exception("engine shutdown failed")
        _client = None


atexit.register(shutdown_engine)


def output_folder(photo: Path) -> Path:
    """A new result folder: under ``ganfit_results`` next to the saved .blend, else under
    Blender's temporary folder; never an existing one."""
    if bpy.data.filepath:
        base = Path(bpy.path.abspath("//")) / "ganfit_results"
    else:
        base = Path(bpy.app.tempdir or "/tmp") / "ganfit_results"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", photo.stem) or "face"
    candidate, n = base / stem, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{stem}_{n}"
    base.mkdir(parents=True, exist_ok=True)
    return candidate


class GANFIT_PG_reconstruct(bpy.types.PropertyGroup):
    """Reconstruct settings, stored on the scene (``scene.ganfit_reconstruct``)."""

    photo: StringProperty(  # type: ignore[valid-type]
        name="Photo", description="Photo of one face (the largest face is used)", subtype="FILE_PATH"
    )
    preset: EnumProperty(  # type: ignore[valid-type]
        name="Quality",
        items=[
            ("FAST", "Fast", "150 landmark steps, 20 lighting steps, 512 px texture"),
            ("DEFAULT", "Default", "The engine's default settings (slower, better)"),
        ],
        default="DEFAULT",
    )


class GANFIT_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a textured, lit, camera-matched head from the photo (Esc cancels)"""

    bl_idname = "ganfit.reconstruct"
    bl_label = "Reconstruct Face"
    bl_options = {"REGISTER"}

    _timer: Any = None
    _job: str = ""
    _client: EngineClient | None = None
    _output: Path | None = None
    _cancel_at: float | None = None
    _status: str = ""

    # -- shared steps ----------------------------------------------------------------------
    def _start(self, context: Any) -> bool:
        settings = context.scene.ganfit_reconstruct
        if not settings.photo:
            self.report({"ERROR"}, "Choose a photo to reconstruct")
            return False
        photo = Path(bpy.path.abspath(settings.photo))
        if not photo.is_file():
            self.report({"ERROR"}, f"Photo not found: {photo}")
            return False
        try:
            client = engine_client(context)
            assert client is not None
            output = output_folder(photo)
            job = uuid.uuid4().hex[:12]
            client.send({
                "type": "reconstruct", "id": job, "photos": [str(photo)], "output": str(output),
                "force": False, "options": dict(PRESETS[settings.preset]),
            })
        except EngineError as exc:
            self.report({"ERROR"}, str(exc))
            return False
        self._client, self._job, self._output = client, job, output
        self._cancel_at, self._status = None, "starting the engine"
        return True

    def _step(self, context: Any) -> set[str] | None:
        """Handle the events that arrived; the operator's result once the job ended."""
        client = self._client
        assert client is not None
        dead = not client.alive() and client.reader_finished()  # before polling: no event lost
        for event in client.poll_events():
            if event.get("id") not in (self._job, None):
                continue
            for hook in list(EVENT_HOOKS):
                hook(event)
            kind = event.get("type")
            if kind == "progress":
                self._progress(context, event)
            elif kind == "done":
                return self._import(context, Path(str(event.get("result") or self._output)))
            elif kind == "cancelled":
                self.report({"WARNING"}, "Reconstruction cancelled")
                return {"CANCELLED"}
            elif kind == "error":
                self.report({"ERROR"}, f"GANFit: {event.get('message')}")
                return {"CANCELLED"}
        if dead:
            detail = client.last_log_line()
            self.report({"ERROR"}, f"The engine stopped ({detail or 'no message'}); see {client.log_path}")
            return {"CANCELLED"}
        if self._cancel_at is not None and time.monotonic() - self._cancel_at > CANCEL_GRACE:
            self.report({"WARNING"}, "Reconstruction cancelled (the engine did not answer; it is restarted next time)")
            client.shutdown(timeout=2)
            return {"CANCELLED"}
        return None

    def _progress(self, context: Any, event: dict[str, Any]) -> None:
        stage, step, total = event.get("stage"), int(event.get("step") or 0), int(event.get("total") or 0)
        self._status = f"GANFit: {stage} {step}/{total} (Esc cancels)"
        self._fraction = {"detect": 0.0, "landmarks": 0.05, "lighting": 0.55, "texture": 0.9}.get(str(stage), 0.0)
        span = {"detect": 0.05, "landmarks": 0.5, "lighting": 0.35, "texture": 0.1}.get(str(stage), 0.0)
        self._fraction += span * (step / total if total else 1.0)

    def _import(self, context: Any, folder: Path) -> set[str]:
        try:
            built = scene_import.import_result(context, folder)
        except result_reader.ResultError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:  # a bug: the import already removed what it built
            log.exception("import of %s failed", folder)
            self.report({"ERROR"}, f"Import failed ({type(exc).__name__}: {exc}); see the system console")
            return {"CANCELLED"}
        scene_import.select_only(context, built.head)
        self.report({"INFO"}, f"Reconstructed {built.collection.name} ({folder})")
        return {"FINISHED"}

    # -- script path -----------------------------------------------------------------------
    def execute(self, context: Any) -> set[str]:
        if not self._start(context):
            return {"CANCELLED"}
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            result = self._step(context)
            if result is not None:
                return result
            if time.monotonic() > deadline and self._cancel_at is None:
                self._cancel()
            time.sleep(0.05)

    # -- UI path ---------------------------------------------------------------------------
    def invoke(self, context: Any, event: Any) -> set[str]:
        if not self._start(context):
            return {"CANCELLED"}
        self._fraction = 0.0
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 1000)
        wm.modal_handler_add(self)
        self._show(context)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS" and self._cancel_at is None:
            self._cancel()
            self._status = "GANFit: cancelling..."
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        result = self._step(context)
        if result is None:
            self._show(context)
            return {"RUNNING_MODAL"}
        self._finish(context)
        return result

    def cancel(self, context: Any) -> None:  # Blender cancels the operator (e.g. file load)
        if self._cancel_at is None:
            self._cancel()
        self._finish(context)

    def _cancel(self) -> None:
        self._cancel_at = time.monotonic()
        try:
            if self._client is not None and self._client.alive():
                self._client.send({"type": "cancel", "id": self._job})
        except EngineError:
            pass

    def _show(self, context: Any) -> None:
        context.window_manager.progress_update(int(1000 * getattr(self, "_fraction", 0.0)))
        if context.area is not None:
            context.area.header_text_set(self._status)
        if context.workspace is not None:
            context.workspace.status_text_set(self._status)

    def _finish(self, context: Any) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.area is not None:
            context.area.header_text_set(None)
        if context.workspace is not None:
            context.workspace.status_text_set(None)


def draw_panel(layout: Any, context: Any) -> None:
    """The Reconstruct part of the GANFit sidebar panel."""
    settings = context.scene.ganfit_reconstruct
    box = layout.box()
    box.prop(settings, "photo")
    box.prop(settings, "preset")
    box.operator(GANFIT_OT_reconstruct.bl_idname, icon="USER")


CLASSES = (GANFIT_PG_reconstruct, GANFIT_OT_reconstruct)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.ganfit_reconstruct = PointerProperty(type=GANFIT_PG_reconstruct)


def unregister() -> None:
    shutdown_engine()
    del bpy.types.Scene.ganfit_reconstruct
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
