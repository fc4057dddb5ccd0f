"""``ganfit serve``: the engine side of the one seam with the Blender add-on (DESIGN.md).

A long-lived process speaking JSON lines: one request per line on stdin, one event per line on
stdout; logs go to stderr. Models stay loaded between reconstructions. Reconstructions run on a
worker thread, so ``cancel`` and ``status`` are answered while one runs; cancelling takes effect
at the next optimisation step (well under a second) and writes nothing. A client that asks for
``mesh_updates`` also gets the head's triangles once (``topology``) and its vertices every few
steps (``mesh``, inline base64), so it can show the head taking shape.

The protocol is specified in docs/protocol.md; ``PROTOCOL_VERSION`` changes whenever a request
or event changes incompatibly.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import __version__
from .errors import GanfitError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1

#: Reconstruction modes a request may name; the others of DESIGN.md are not built yet.
MODES = ("ganfit",)
PLANNED_MODES = ("fast", "ganfit++")


def encode_array(array: np.ndarray, dtype: str) -> str:
    """Base64 of the array's bytes as little-endian ``dtype`` ('<f4', '<i4'), C order."""
    data = np.ascontiguousarray(np.asarray(array), dtype=np.dtype(dtype))
    return base64.b64encode(data.tobytes()).decode("ascii")


class Cancelled(Exception):
    """Raised inside a reconstruction when the client cancelled it."""


class _Job:
    def __init__(self, job_id: str):
        self.id = job_id
        self.cancel = threading.Event()
        self.stage = "queued"
        self.step = 0
        self.total = 0
        self.mesh_updates = False
        self.topology_sent = False


def _settings_from_options(options: dict[str, Any]):
    """FitSettings from a request's ``options`` (the CLI's names; unknown keys are an error)."""
    from .fit.settings import FitSettings

    known = {"steps", "lighting_steps", "fit_steps", "lr", "texture_size", "seed", "device", "face", "clean_texture"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise GanfitError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    base = FitSettings()
    landmark, appearance, joint = base.landmark, base.appearance, base.joint
    for key, value in options.items():
        if key in ("steps", "lighting_steps", "fit_steps", "texture_size", "seed", "face") and not isinstance(value, int):
            raise GanfitError(f"option {key}: expected a whole number, got {value!r}")
    if "clean_texture" in options and not isinstance(options["clean_texture"], bool):
        raise GanfitError(f"option clean_texture: expected true or false, got {options['clean_texture']!r}")
    if "steps" in options:
        landmark = replace(landmark, steps=max(1, options["steps"]))
    if "lr" in options:
        landmark = replace(landmark, learning_rate=float(options["lr"]))
    if "lighting_steps" in options:
        appearance = replace(appearance, steps=max(1, options["lighting_steps"]))
    if "fit_steps" in options:
        joint = replace(joint, steps=max(0, options["fit_steps"]))
    if "texture_size" in options:
        appearance = replace(appearance, texture_size=min(4096, max(16, options["texture_size"])))
    if "clean_texture" in options:
        appearance = replace(appearance, skin_only_outside_face=options["clean_texture"])
    return FitSettings(
        landmark=landmark,
        appearance=appearance,
        joint=joint,
        seed=options.get("seed", 0),
        device=str(options.get("device", "cpu")),
        face_index=options.get("face"),
    )


class Server:
    """Reads requests, runs one reconstruction at a time, writes events."""

    def __init__(self, stdin: TextIO, stdout: TextIO):
        self._in = stdin
        self._out = stdout
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._worker: threading.Thread | None = None
        self._reconstructors: dict[Any, Any] = {}

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), allow_nan=False, default=str)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def run(self) -> int:
        self.emit({"type": "ready", "protocol": PROTOCOL_VERSION, "version": __version__})
        for raw in self._in:
            raw = raw.strip()
            if not raw:
                continue
            try:
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.emit({"type": "error", "id": None, "message": f"not a JSON object request ({exc}); send one JSON object per line"})
                continue
            if not self._handle(request):
                break
        self._shutdown()
        return 0

    def _handle(self, request: dict[str, Any]) -> bool:
        kind = request.get("type")
        job_id = request.get("id")
        if kind == "reconstruct":
            self._start(request)
        elif kind == "cancel":
            job = self._job
            if job is not None and (job_id is None or job_id == job.id):
                job.cancel.set()
            else:
                self.emit({"type": "error", "id": job_id, "message": "nothing to cancel: no reconstruction with that id is running"})
        elif kind == "status":
            job = self._job
            self.emit({
                "type": "status", "id": job_id, "busy": job is not None,
                "job": None if job is None else {"id": job.id, "stage": job.stage, "step": job.step, "total": job.total},
                "protocol": PROTOCOL_VERSION, "version": __version__,
            })
        elif kind == "shutdown":
            return False
        else:
            self.emit({"type": "error", "id": job_id, "message": f"unknown request type {kind!r}; use reconstruct, cancel, status or shutdown"})
        return True

    def _start(self, request: dict[str, Any]) -> None:
        job_id = str(request.get("id") or "")
        if not job_id:
            self.emit({"type": "error", "id": None, "message": "a reconstruct request needs an 'id' to tag its events"})
            return
        if self._job is not None:
            self.emit({"type": "error", "id": job_id, "message": f"busy with reconstruction {self._job.id}; cancel it or wait for its 'done'"})
            return
        job = _Job(job_id)
        self._job = job
        self._worker = threading.Thread(target=self._reconstruct, args=(job, request), name=f"reconstruct-{job_id}", daemon=True)
        self._worker.start()

    def _reconstructor(self, settings):
        """One Reconstructor per (device, settings): models load once per process."""
        from .fit.reconstruct import Reconstructor

        key = repr(settings)
        if key not in self._reconstructors:
            self._reconstructors[key] = Reconstructor(settings)
        return self._reconstructors[key]

    def _reconstruct(self, job: _Job, request: dict[str, Any]) -> None:
        from .io.result import check_output_folder, write_result

        try:
            photos = request.get("photos")
            output = request.get("output")
            if not isinstance(photos, list) or len(photos) != 1 or not isinstance(photos[0], str):
                raise GanfitError("'photos' must be a list with one photo path (several photos of one person come later)")
            if not isinstance(output, str) or not output:
                raise GanfitError("'output' must be the path of the result folder to write")
            force = bool(request.get("force", False))
            mode = request.get("mode", "ganfit")
            if mode in PLANNED_MODES:
                raise GanfitError(f"mode {mode!r} is not available yet; use 'ganfit'")
            if mode not in MODES:
                raise GanfitError(f"unknown mode {mode!r}; use 'ganfit'")
            job.mesh_updates = bool(request.get("mesh_updates", False))
            settings = _settings_from_options(request.get("options") or {})
            check_output_folder(Path(output), force=force)
            reconstructor = self._reconstructor(settings)

            def progress(event) -> None:
                if job.cancel.is_set():
                    raise Cancelled()
                job.stage, job.step, job.total = event.stage, event.step, event.total
                self.emit({"type": "progress", "id": job.id, "stage": event.stage, "step": event.step,
                           "total": event.total, "losses": event.losses})
                vertices = getattr(event, "vertices", None)
                if job.mesh_updates and vertices is not None:
                    self._emit_mesh(job, reconstructor, event.stage, event.step, vertices)

            result = reconstructor.reconstruct(photos[0], progress=progress)
            if job.cancel.is_set():
                raise Cancelled()
            folder = write_result(result, Path(output), force=force)
            final = {"type": "done", "id": job.id, "result": str(folder), "landmark_error_iod": result.landmark_error_iod}
        except Cancelled:
            final = {"type": "cancelled", "id": job.id}
        except GanfitError as exc:
            final = {"type": "error", "id": job.id, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug: report it, keep serving, log the traceback
            log.exception("reconstruction %s failed", job.id)
            final = {"type": "error", "id": job.id, "message": f"internal error ({type(exc).__name__}: {exc}); please report it with the log"}
        # Free the slot before the final event, so a request sent on seeing it finds us idle.
        self._job = None
        self.emit(final)

    def _emit_mesh(self, job: _Job, reconstructor: Any, stage: str, step: int, vertices: np.ndarray) -> None:
        """The head as it is now; before the job's first one, its triangles (``topology``)."""
        vertices = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
        if not job.topology_sent:
            faces = reconstructor.model.faces.detach().cpu().numpy()
            self.emit({"type": "topology", "id": job.id, "vertex_count": len(vertices),
                       "face_count": len(faces), "faces": encode_array(faces, "<i4")})
            job.topology_sent = True
        self.emit({"type": "mesh", "id": job.id, "stage": stage, "step": step,
                   "vertex_count": len(vertices), "vertices": encode_array(vertices, "<f4")})

    def _shutdown(self) -> None:
        job, worker = self._job, self._worker
        if job is not None:
            job.cancel.set()
        if worker is not None:
            worker.join(timeout=10)
        self.emit({"type": "bye"})


def serve(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Run the protocol on the given streams until 'shutdown' or end of input."""
    return Server(stdin, stdout).run()


