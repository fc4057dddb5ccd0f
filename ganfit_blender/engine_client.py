"""The add-on's side of ``python -m ganfit serve`` (docs/protocol.md): a child process that
speaks JSON lines. Standard library only, no bpy, so it can be tested and used on its own.

The engine starts lazily (on the first request, or on a thread with ``begin_start`` so
Blender's UI never waits for it), stays alive between reconstructions and is started afresh by
the next request after it stopped or crashed. Its stderr goes to a log file in a temporary
folder (``log_path``, ``ganfit-engine-<pid>-*``); error messages point there. ``close`` removes
the folder, and a new client removes the folders of Blender sessions that are gone (killed
ones included).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .seam import protocol

__all__ = [
    "PROTOCOL_VERSION", "Candidate", "EngineClient", "EngineError", "check_python", "detect_python",
    "python_candidates",
]

log = logging.getLogger(__name__)

#: The protocol version this client speaks (the engine's ``ready`` event must carry it).
#: The engine protocol's version, from the engine's own definition (seam.py).
PROTOCOL_VERSION: int = protocol.PROTOCOL_VERSION

#: Seconds to wait for the engine's ``ready`` line (imports torch; slow on a cold disk).
READY_TIMEOUT = 120.0

#: The log folders' name prefix in the system temp folder; the creator's pid follows it.
LOG_DIR_PREFIX = "ganfit-engine-"
#: Where the pid cannot be checked (Windows), a log folder this old (seconds) counts as stale.
STALE_LOG_AGE = 7 * 24 * 3600.0


class EngineError(RuntimeError):
    """The engine could not be started or stopped unexpectedly; the message is one line."""


def _last_line(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def check_python(python: str, timeout: float = 60.0) -> None:
    """Raise ``EngineError`` unless ``python`` exists and can ``import ganfit``."""
    exe = shutil.which(python) if os.path.sep not in python else python
    if not exe or not Path(exe).is_file():
        raise EngineError(f"engine Python interpreter not found: {python!r}; set it in the GANFit add-on preferences")
    try:
        done = subprocess.run([exe, "-c", "import ganfit"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"could not run the engine Python {python!r} ({exc})") from exc
    if done.returncode != 0:
        last = [ln for ln in done.stderr.splitlines() if ln.strip()]
        detail = last[-1].strip() if last else f"exit status {done.returncode}"
        raise EngineError(f"'ganfit' is not importable with {python} ({detail}); install the engine there or choose another interpreter")


def _pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists; None where that cannot be asked safely (Windows, where
    ``os.kill`` would terminate it)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_log_dirs(temp_dir: Path | None = None) -> list[Path]:
    """Remove the ``ganfit-engine-<pid>-*`` folders whose Blender is gone (a crash or a kill
    skips ``close``); the folders removed. Folders without a pid (older add-ons) go when their
    files are a week old."""
    root = Path(temp_dir or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        folders = list(root.glob(LOG_DIR_PREFIX + "*"))
    except OSError:
        return removed
    for folder in folders:
        pid_text = folder.name[len(LOG_DIR_PREFIX):].split("-", 1)[0]
        alive = _pid_alive(int(pid_text)) if pid_text.isdigit() else None
        if alive is None:
            try:
                newest = max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()])
            except OSError:
                continue
            alive = time.time() - newest < STALE_LOG_AGE
        if not alive and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    if removed:
        log.info("removed %d engine log folder(s) of ended sessions", len(removed))
    return removed


@dataclass(frozen=True)
class Candidate:
    """A Python interpreter that may run the engine, and where the add-on found it."""

    python: str
    source: str  # for the preferences: "GANFIT_PYTHON", "backend set-up", "ganfit on PATH", ...


def _script_python(script: Path) -> str | None:
    """The interpreter a console script (``ganfit``) runs with: a ``python`` beside it (a
    venv's bin/ or Scripts/), else the script's ``#!`` line."""
    for name in ("python", "python3", "python.exe"):
        sibling = script.parent / name
        if sibling.is_file():
            return str(sibling)
    try:
        with open(script, "rb") as handle:
            first = handle.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if first.startswith("#!") and "python" in first:
        exe = first[2:].strip().split()[0]
        return exe if Path(exe).is_file() else None
    return None


def python_candidates(venv_python: Path | None = None) -> list[Candidate]:
    """Where to look for an engine when the preferences name none, in this order:
    ``$GANFIT_PYTHON``, the backend set-up's environment, the Python of a ``ganfit`` command on
    PATH, ``python3`` on PATH. Nothing is run here."""
    found: list[Candidate] = []
    env = os.environ.get("GANFIT_PYTHON", "").strip()
    if env:
        found.append(Candidate(env, "GANFIT_PYTHON"))
    if venv_python is not None:
        found.append(Candidate(str(venv_python), "backend set-up"))
    script = shutil.which("ganfit")
    if script:
        python = _script_python(Path(script))
        if python:
            found.append(Candidate(python, "ganfit on PATH"))
    python3 = shutil.which("python3")
    if python3:
        found.append(Candidate(python3, "python3 on PATH"))
    unique: dict[str, Candidate] = {}
    for candidate in found:
        unique.setdefault(candidate.python, candidate)
    return list(unique.values())


def detect_python(venv_python: Path | None = None, timeout: float = 30.0) -> Candidate | None:
    """The first of ``python_candidates`` that can ``import ganfit``; None when none can.
    ``$GANFIT_PYTHON`` is taken as it is (the user chose it: errors then name it)."""
    for candidate in python_candidates(venv_python):
        if candidate.source == "GANFIT_PYTHON":
            return candidate
        try:
            check_python(candidate.python, timeout=timeout)
        except EngineError as exc:
            log.info("engine Python candidate %s (%s) rejected: %s", candidate.python, candidate.source, exc)
            continue
        return candidate
    return None


class EngineClient:
    """One engine child process, started on demand; events arrive on a background thread."""

    def __init__(self, python: str):
        self.python = python
        self._proc: subprocess.Popen[str] | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None
        remove_stale_log_dirs()
        self._log_dir = Path(tempfile.mkdtemp(prefix=f"{LOG_DIR_PREFIX}{os.getpid()}-"))
        self.log_path = self._log_dir / "engine.log"
        self.version: str | None = None
        self._lock = threading.Lock()
        self._starter: threading.Thread | None = None
        self._start_error: EngineError | None = None
        self._stopping = threading.Event()  # set by shutdown: a start under way stops

    # -- process ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _executable(self) -> str:
        exe = shutil.which(self.python) if os.path.sep not in self.python else self.python
        if not exe or not Path(exe).is_file():
            raise EngineError(
                f"engine Python interpreter not found: {self.python!r}; set it in the GANFit add-on preferences"
            )
        return exe

    def begin_start(self) -> None:
        """Start the engine on a thread and return at once (Blender's UI must not wait the
        seconds torch takes to load); ``start_finished`` says when it is up. A missing
        interpreter is raised here, at once."""
        self._executable()
        if self.ready() or self.starting():
            return
        self._start_error = None
        self._starter = threading.Thread(target=self._start_in_background, name="ganfit-engine-start", daemon=True)
        self._starter.start()

    def _start_in_background(self) -> None:
        try:
            self.start()
        except EngineError as exc:
            self._start_error = exc
        except Exception as exc:  # noqa: BLE001 - a bug: report it in one line, keep Blender running
            log.exception("engine start failed")
            self._start_error = EngineError(f"the engine could not be started ({type(exc).__name__}: {exc})")

    def starting(self) -> bool:
        """True while ``begin_start``'s thread runs."""
        return self._starter is not None and self._starter.is_alive()

    def ready(self) -> bool:
        """True when the engine runs and has said ``ready`` (its reader thread is reading)."""
        return self.alive() and self._reader is not None and self._reader.is_alive()

    def start_finished(self) -> bool:
        """Without waiting: True once the engine is ready, False while it starts; raises the
        start's ``EngineError`` when it failed."""
        if self.starting():
            return False
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            raise error
        return self.ready()

    def start(self) -> None:
        """Start the engine (if not running) and wait for its ``ready`` event."""
        with self._lock:
            if self.alive():
                return
            self._reap()
            exe = self._executable()
            self._events = queue.Queue()
            log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the child owns it
            try:
                proc = subprocess.Popen(
                    [exe, "-m", "ganfit", "serve"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                    text=True, encoding="utf-8", bufsize=1,
                )
            except OSError as exc:
                raise EngineError(f"could not start the engine with {self.python} ({exc})") from exc
            finally:
                log_file.close()
            self._proc = proc
            if self._stopping.is_set():
                self._kill()
                raise EngineError("the engine start was stopped (the add-on is shutting down)")
            deadline = time.monotonic() + READY_TIMEOUT
            ready: dict[str, Any] | None = None
            while ready is None:
                line = self._readline_with_deadline(proc, deadline)
                if line is None:
                    self._kill()
                    detail = _last_line(self.log_path) or "no output"
                    raise EngineError(
                        f"the engine did not start with {self.python} ({detail}); see {self.log_path}"
                    )
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("type") == "ready":
                    ready = event
            if ready.get("protocol") != PROTOCOL_VERSION:
                self._kill()
                raise EngineError(
                    f"the engine at {self.python} speaks protocol {ready.get('protocol')!r}, this add-on "
                    f"speaks {PROTOCOL_VERSION}; install matching versions of the add-on and the engine"
                )
            self.version = str(ready.get("version"))
            self._reader = threading.Thread(target=self._read, args=(proc,), name="ganfit-engine-reader", daemon=True)
            self._reader.start()

    def _readline_with_deadline(self, proc: subprocess.Popen[str], deadline: float) -> str | None:
        """One stdout line before ``deadline``; None if the child exits or the time runs out."""
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive() or not box or not box[0]:
            return None
        return box[0]

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._events.put(event)

    def _reap(self) -> None:
        if self._proc is not None:
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            self._proc = None

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    # -- requests and events ---------------------------------------------------------------
    def send(self, request: dict[str, Any]) -> None:
        """Send one request, starting the engine first if it is not running (waiting for a
        start under way)."""
        starter = self._starter
        if starter is not None and starter is not threading.current_thread():
            starter.join(READY_TIMEOUT + 5)
        if not self.alive():
            self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise EngineError(f"the engine stopped ({exc}); see {self.log_path}") from exc

    def poll_events(self) -> list[dict[str, Any]]:
        """Every event received since the last call, without waiting."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def reader_finished(self) -> bool:
        """True once the engine's stdout closed (it exited) and every event was read."""
        return self._reader is None or not self._reader.is_alive()

    def last_log_line(self) -> str:
        return _last_line(self.log_path)

    def kill(self) -> None:
        """Kill the engine without waiting for it (an engine that stopped answering; Blender's
        timers must not wait). The next request starts a new one."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass  # reaped by subprocess's next Popen
        self._reap()

    def close(self, timeout: float = 10.0) -> None:
        """``shutdown``, then remove the log folder (the add-on's exit: nothing is left behind)."""
        try:
            self.shutdown(timeout)
        finally:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the engine to stop, wait up to ``timeout`` s, then kill it."""
        starter = self._starter
        if starter is not None and starter.is_alive() and starter is not threading.current_thread():
            self._stopping.set()  # a start under way kills its child and gives up
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
            starter.join(timeout)
            self._stopping.clear()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"type": "shutdown"}) + "\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if self._reader is not None:
            self._reader.join(timeout=2)
        self._reap()
