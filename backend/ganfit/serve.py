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
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

import numpy as np

from . import __version__
from .errors import GanfitError
from .protocol import PROTOCOL_VERSION  # defined once, shared with the add-on

log = logging.getLogger(__name__)




def encode_array(array: np.ndarray, dtype: str) -> str:
    """Base64 of the array's bytes as little-endian ``dtype`` ('<f4', '<i4'), C order."""
    data = np.ascontiguousarray(np.asarray(array), dtype=np.dtype(dtype))
    return base64.b64encode(data.tobytes()).decode("ascii")


class Cancelled(Exception):
    """Raised inside a reconstruction when the client cancelled it."""


class _Job:
    def __init__(self, job_id: str | int):
        self.id = job_id
        self.cancel = threading.Event()
        self.stage = "queued"
        self.step = 0
        self.total = 0
        self.mesh_updates = False
        self.topology_sent = False


def _settings_from_options(options: Any):
    """FitSettings from a request's ``options``: the command line's rules (ganfit.settings)."""
    from .settings import build_settings

    return build_settings(options, "protocol")


#: Longest request line read whole. Requests are a few hundred bytes; a longer line is
#: answered with an error and skipped to its end, so no line can exhaust memory.
MAX_LINE_BYTES = 1 << 20


#: Most photos one request may fit jointly: each adds its own renders to every step.
MAX_PHOTOS = 20


class RequestError(ValueError):
    """A line that is not a request this protocol can read."""


def _reject_constant(name: str) -> Any:
    raise RequestError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"{text} is too large for a number")
    return value


def parse_request(line: bytes | str) -> dict[str, Any]:
    """One request line as a dict; anything else (bad UTF-8, bad JSON, NaN or 1e400, nesting
    too deep for the parser, not an object) is a ``RequestError`` with a one-line reason."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        request = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise RequestError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise RequestError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, RequestError, int too long to convert
        raise RequestError(str(exc).splitlines()[0][:200]) from None
    if not isinstance(request, dict):
        raise RequestError(f"a JSON {type(request).__name__}, not an object")
    return request


def _request_id(request: dict[str, Any]) -> str | int | None:
    """The request's ``id`` (a string or whole number, echoed as sent); None when absent."""
    value = request.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > 200:
        raise GanfitError("'id' must be a string or a whole number of at most 200 characters")
    return value


def _same_id(a: str | int | None, b: str | int | None) -> bool:
    """Ids match by their text: a client may cancel job "7" as 7."""
    return a is not None and b is not None and str(a) == str(b)


def _flag(request: dict[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise GanfitError(f"'{key}' must be true or false, got {json.dumps(value)[:40]}")
    return value


def _path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise GanfitError(f"{what} must be a non-empty path string")
    return value


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class _JobSpec:
    """A reconstruct request, checked: what the worker needs and nothing it must re-check."""

    photos: tuple[str, ...]  # one person: several photos are fitted jointly (paper 3.5)
    output: Path
    force: bool
    mesh_updates: bool
    settings: Any  # FitSettings


def _job_spec(request: dict[str, Any]) -> _JobSpec:
    """Check a reconstruct request's fields, options and output folder up front, so a bad
    request costs milliseconds and is answered while the engine stays free."""
    from .io.result import check_output_folder

    photos = request.get("photos")
    if not isinstance(photos, list) or not 1 <= len(photos) <= MAX_PHOTOS:
        raise GanfitError(f"'photos' must be a list of 1 to {MAX_PHOTOS} photo paths of one person")
    paths = tuple(_path(photo, "'photos' entry") for photo in photos)
    if len({str(Path(path).resolve()) for path in paths}) != len(paths):
        raise GanfitError("the same photo is in 'photos' twice; give each photo once")
    output = Path(_path(request.get("output"), "'output' (the result folder to write)"))
    force = _flag(request, "force")
    options = request.get("options")
    options = {} if options is None else options
    if "mode" in request and isinstance(options, dict):  # the request's own field, checked with the options
        options = {**options, "mode": request["mode"]}
    settings = _settings_from_options(options)
    check_output_folder(output, force=force)
    return _JobSpec(paths, output, force, _flag(request, "mesh_updates"), settings)


class Server:
    """Reads requests, runs one reconstruction at a time, writes events."""

    def __init__(self, stdin: BinaryIO | TextIO, stdout: TextIO):
        # Bytes when there are any: invalid UTF-8 is then an error event, whatever the locale.
        self._in = getattr(stdin, "buffer", stdin)
        self._out = stdout
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._worker: threading.Thread | None = None
        self._reconstructors: dict[Any, Any] = {}
        self._closed = False

    def emit(self, event: dict[str, Any]) -> None:
        """Write one event line; NaN losses go out as null. A client that has gone away ends
        the server quietly (the next read sees end of input)."""
        try:
            line = json.dumps(event, separators=(",", ":"), allow_nan=False, default=str)
        except ValueError:
            line = json.dumps(_finite(event), separators=(",", ":"), allow_nan=False, default=str)
        with self._lock:
            if self._closed:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:  # ValueError: stream closed
                self._closed = True
                log.info("client gone (%s); stopping", exc)

    def _lines(self) -> Iterator[bytes | str | None]:
        """Request lines, each at most MAX_LINE_BYTES; None for a longer one (skipped)."""
        while not self._closed:
            line = self._in.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            newline = b"\n" if isinstance(line, bytes) else "\n"
            if len(line) > MAX_LINE_BYTES and not line.endswith(newline):
                while True:  # drop the rest of the over-long line without holding it
                    rest = self._in.readline(MAX_LINE_BYTES)
                    if not rest or rest.endswith(newline):
                        break
                yield None
                continue
            yield line

    def run(self) -> int:
        self.emit({"type": "ready", "protocol": PROTOCOL_VERSION, "version": __version__})
        try:
            for line in self._lines():
                if not self._serve_line(line):
                    break
        except KeyboardInterrupt:  # SIGTERM or Ctrl-C: cancel the job, say bye, exit
            log.info("interrupted; stopping")
        self._shutdown()
        return 0

    def _serve_line(self, line: bytes | str | None) -> bool:
        """Answer one line; False once it asked to shut down. No line can end the server."""
        if line is None:
            self.emit({"type": "error", "id": None, "message": f"request line longer than {MAX_LINE_BYTES} bytes; "
                                                              "send one short JSON object per line"})
            return True
        if not line.strip():
            return True
        try:
            request = parse_request(line)
        except RequestError as exc:
            self.emit({"type": "error", "id": None,
                       "message": f"not a JSON object request ({exc}); send one JSON object per line"})
            return True
        try:
            return self._handle(request)
        except GanfitError as exc:
            self.emit({"type": "error", "id": _echo_id(request), "message": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a bug: report it, keep serving, log the traceback
            log.exception("request failed")
            self.emit({"type": "error", "id": _echo_id(request),
                       "message": f"internal error ({type(exc).__name__}); please report it with the log"})
        return True

    def _handle(self, request: dict[str, Any]) -> bool:
        kind = request.get("type")
        job_id = _request_id(request)
        if kind == "reconstruct":
            self._start(request, job_id)
        elif kind == "cancel":
            job = self._job
            if job is not None and (job_id is None or _same_id(job_id, job.id)):
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
            shown = json.dumps(kind)[:40] if isinstance(kind, (str, int, float, bool, type(None))) else type(kind).__name__
            self.emit({"type": "error", "id": job_id, "message": f"unknown request type {shown}; use reconstruct, cancel, status or shutdown"})
        return True

    def _start(self, request: dict[str, Any], job_id: str | int | None) -> None:
        if job_id is None or job_id == "":
            self.emit({"type": "error", "id": None, "message": "a reconstruct request needs an 'id' to tag its events"})
            return
        if self._job is not None:
            self.emit({"type": "error", "id": job_id, "message": f"busy with reconstruction {self._job.id}; cancel it or wait for its 'done'"})
            return
        spec = _job_spec(request)  # a bad request is refused here, before the worker starts
        job = _Job(job_id)
        job.mesh_updates = spec.mesh_updates
        self._job = job
        self._worker = threading.Thread(target=self._reconstruct, args=(job, spec), name=f"reconstruct-{job_id}", daemon=True)
        self._worker.start()

    def _reconstructor(self, settings):
        """One Reconstructor per (device, settings): models load once per process."""
        from .fit.reconstruct import Reconstructor

        key = repr(settings)
        if key not in self._reconstructors:
            self._reconstructors[key] = Reconstructor(settings)
        return self._reconstructors[key]

    def _reconstruct(self, job: _Job, spec: _JobSpec) -> None:
        from .io.result import write_result

        try:
            reconstructor = self._reconstructor(spec.settings)

            def progress(event) -> None:
                if job.cancel.is_set():
                    raise Cancelled()
                job.stage, job.step, job.total = event.stage, event.step, event.total
                self.emit({"type": "progress", "id": job.id, "stage": event.stage, "step": event.step,
                           "total": event.total, "losses": event.losses})
                vertices = getattr(event, "vertices", None)
                if job.mesh_updates and vertices is not None:
                    self._emit_mesh(job, reconstructor, event.stage, event.step, vertices)

            result = reconstructor.reconstruct(list(spec.photos), progress=progress)
            if job.cancel.is_set():
                raise Cancelled()
            folder = write_result(result, spec.output, force=spec.force)
            final = {"type": "done", "id": job.id, "result": str(folder), "landmark_error_iod": result.landmark_error_iod}
        except Cancelled:
            final = {"type": "cancelled", "id": job.id}
        except GanfitError as exc:
            final = {"type": "error", "id": job.id, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug: report it, keep serving, log the traceback
            log.exception("reconstruction %s failed", job.id)
            final = {"type": "error", "id": job.id,
                     "message": f"internal error ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                "please report it with the log"}
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


def _echo_id(request: dict[str, Any]) -> str | int | None:
    """The request's id for an error event, or None when the id itself is what is wrong."""
    try:
        return _request_id(request)
    except GanfitError:
        return None


def serve(stdin: BinaryIO | TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Run the protocol on the given streams until 'shutdown' or end of input."""
    from .threads import engine_environment

    engine_environment()  # before torch loads: its OpenMP pool starts with the engine's threads
    server = Server(stdin, stdout)
    try:
        return server.run()
    finally:
        if server._closed:
            _drop_stdout(stdout)


def _drop_stdout(stdout: TextIO) -> None:
    """The client is gone (Blender quit or was killed): point the process's stdout at the null
    device, so the interpreter's flush at exit cannot print a BrokenPipeError into the log."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests' StringIO)
        pass


