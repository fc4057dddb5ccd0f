"""Add-on preferences: which Python runs the engine, and **Set up backend**, which makes one.

The engine interpreter is the one set here, else the first that can ``import ganfit`` of:
``$GANFIT_PYTHON``, the environment Set up backend made in the extension's user folder, the
Python of a ``ganfit`` command on PATH, ``python3`` on PATH (``engine_client.detect_python``).
Set up backend runs ``backend_setup`` on a background thread; a modal operator polls it, so
Blender stays responsive while pip downloads PyTorch, and draws its progress here. Before the
click the preferences say which PyTorch build it would install (CPU-only unless an NVIDIA GPU
is found, or the user's choice) and how much that downloads.
"""

from __future__ import annotations

import atexit
import logging
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import bpy
from bpy.props import EnumProperty, StringProperty

from .backend_setup import (
    BackendSetup,
    SetupError,
    SetupPlan,
    TORCH_CPU_INDEX,
    TorchBuild,
    choose_torch,
    complete_venv_python,
    detect_nvidia_gpu,
    find_wheel,
)
from .engine_client import Candidate, detect_python

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import IconItems, OperatorReturnItems

log = logging.getLogger(__name__)

#: The add-on's package (``bl_ext.<repo>.ganfit`` as an extension), the preferences' id.
ADDON_PACKAGE = __package__ or "ganfit_blender"

#: Folder of the engine's environment inside the extension's user folder.
VENV_FOLDER = "backend-venv"

#: The running or last set-up (one at a time), read by the preferences' draw.
_setup: BackendSetup | None = None
#: Detection result, cached: detection runs interpreters, too slow for every redraw.
_detected: Candidate | None = None
_detection_done = False
#: NVIDIA GPU detection, cached likewise (it may run nvidia-smi).
_gpu: str | None = None
_gpu_done = False


def user_folder(create: bool = False) -> Path:
    """The extension's user folder (kept across upgrades of the extension); for a legacy
    add-on install, ``<Blender user datafiles>/ganfit``."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, create=create))
    except ValueError:  # not loaded as an extension (e.g. a source checkout on sys.path)
        return Path(bpy.utils.user_resource("DATAFILES", path="ganfit", create=create))


def venv_dir() -> Path:
    """Where Set up backend puts the engine's virtual environment."""
    return user_folder() / VENV_FOLDER


def bundled_wheels() -> Path:
    """The extension's ``wheels/`` folder (the repository's when run from a source checkout)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "wheels", here.parent / "wheels"):
        if folder.is_dir():
            return folder
    return here / "wheels"


def addon_preferences(context: bpy.types.Context) -> GANFIT_AP_preferences | None:
    """This add-on's preferences (None while it is not enabled)."""
    prefs = context.preferences
    addon = prefs.addons.get(ADDON_PACKAGE) if prefs is not None else None
    return cast("GANFIT_AP_preferences | None", addon.preferences if addon is not None else None)


_detection_lock = threading.Lock()


def detected_python(refresh: bool = False) -> Candidate | None:
    """The automatically found engine interpreter (cached after the first search)."""
    global _detected, _detection_done
    with _detection_lock:  # one search at a time: the start-up one (below) or a click's
        if refresh or not _detection_done:
            _detected = detect_python(complete_venv_python(venv_dir()))
            _detection_done = True
            log.info("engine Python detected: %s", _detected)
        return _detected


def detect_in_background() -> None:
    """Search for the engine's interpreter on a thread when the add-on starts: the search runs
    ``python -c "import ganfit"`` for each candidate (a second or more), which on the first
    Reconstruct click used to freeze Blender's UI (issue 18, item 4)."""
    threading.Thread(target=detected_python, name="ganfit-detect-python", daemon=True).start()


def nvidia_gpu(refresh: bool = False) -> str | None:
    """This machine's NVIDIA GPU, found without torch (cached after the first look)."""
    global _gpu, _gpu_done
    if refresh or not _gpu_done:
        _gpu = detect_nvidia_gpu()
        _gpu_done = True
        log.info("NVIDIA GPU: %s", _gpu or "none found")
    return _gpu


def torch_build(context: bpy.types.Context) -> TorchBuild:
    """The PyTorch build Set up backend installs with the preferences' PyTorch option."""
    prefs = addon_preferences(context)
    option = str(prefs.torch_build) if prefs is not None else "AUTO"
    return choose_torch(option, nvidia_gpu())


def wrapped_label(layout: bpy.types.UILayout, text: str, width: int, icon: IconItems = "NONE") -> None:
    """``text`` as labels of at most ``width`` characters: Blender cuts a long label off ("...")
    instead of wrapping it. Lines after the first are indented to line up with an icon."""
    column = layout.column(align=True)
    lines = textwrap.wrap(text, max(20, width), break_on_hyphens=False) or [""]
    for number, line in enumerate(lines):
        column.label(text=line, icon=icon if number == 0 else ("NONE" if icon == "NONE" else "BLANK1"))


def label_width(context: bpy.types.Context, margin_px: int = 0) -> int:
    """How many characters fit on a preferences line (about 7 px each at 100 % UI scale);
    80 where no region is drawing (scripts, tests)."""
    region = context.region
    if region is None or region.width <= 0:
        return 80
    prefs = context.preferences
    scale = prefs.system.ui_scale if prefs is not None else 1.0
    return int((region.width - 80 - margin_px) / (7.0 * scale))


def engine_python(context: bpy.types.Context) -> str:
    """The interpreter set in the preferences, else the detected one ("" when none)."""
    prefs = addon_preferences(context)
    path = str(prefs.python_path or "") if prefs is not None else ""
    if path:
        return str(bpy.path.abspath(path))
    found = detected_python()
    return found.python if found is not None else ""


def setup_running() -> bool:
    return _setup is not None and not _setup.progress.finished


def cancel_setup() -> None:
    """Stop a running set-up (Blender exit, unregister); it removes what it made."""
    if setup_running() and _setup is not None:
        _setup.cancel()
        _setup.join(timeout=10)


atexit.register(cancel_setup)


def setup_plan(context: bpy.types.Context) -> SetupPlan:
    """The set-up the preferences ask for; raises SetupError with what to do when it cannot run."""
    prefs = addon_preferences(context)
    index_url = str(prefs.pip_index_url).strip() if prefs is not None else ""
    build = torch_build(context)
    if not bpy.app.online_access and not index_url.startswith("file:"):
        raise SetupError(
            "Blender's online access is off: allow it (Preferences > System > Network > Allow Online "
            "Access), then click Set up backend again"
        )
    folder = user_folder(create=True) / VENV_FOLDER
    return SetupPlan(
        venv_dir=folder,
        wheel=find_wheel(bundled_wheels()),
        index_url=index_url,
        extra_index_urls=build.extra_index_urls,
        download_note=build.summary(),
        # The CPU-only build from its index alone, so pip cannot quietly take PyPI's CUDA build;
        # a mirror set in the preferences is the user's to manage, so it is left as it is.
        torch_index_url=TORCH_CPU_INDEX if not index_url and TORCH_CPU_INDEX in build.extra_index_urls else "",
    )


def _redraw_preferences() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


class GANFIT_OT_setup_backend(bpy.types.Operator):
    """Make a Python environment for the engine in the extension's user folder and install the
    bundled engine with PyTorch into it (the preferences show the download size above the button)"""

    bl_idname = "ganfit.setup_backend"
    bl_label = "Set up backend"
    bl_options = {"REGISTER", "INTERNAL"}

    _timer: bpy.types.Timer | None = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not setup_running()

    def _begin(self, context: bpy.types.Context) -> BackendSetup | None:
        global _setup
        try:
            plan = setup_plan(context)
        except SetupError as exc:
            self.report({"ERROR"}, str(exc))
            return None
        _setup = BackendSetup(plan)
        log.info("backend set-up: %s into %s", plan.download_note, plan.venv_dir)
        return _setup

    def _end(self, context: bpy.types.Context, setup: BackendSetup) -> set[OperatorReturnItems]:
        outcome = setup.progress
        if not outcome.ok:
            cancelled = outcome.message.endswith("cancelled")
            self.report({"WARNING"} if cancelled else {"ERROR"}, outcome.message)
            return {"CANCELLED"}
        prefs = addon_preferences(context)
        if prefs is not None:
            prefs.python_path = outcome.python
        detected_python(refresh=True)
        self.report({"INFO"}, outcome.message)
        return {"FINISHED"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        """Script path: the whole set-up, blocking."""
        setup = self._begin(context)
        if setup is None:
            return {"CANCELLED"}
        setup.run()
        return self._end(context, setup)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        setup = self._begin(context)
        wm = context.window_manager
        if setup is None or wm is None:
            return {"CANCELLED"}
        setup.start()
        self.report({"INFO"}, f"Setting up the backend: {setup.plan.download_note}")
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        _redraw_preferences()
        setup = _setup
        if setup is None or not setup.progress.finished:
            return {"PASS_THROUGH"}
        self._stop_timer(context)
        return self._end(context, setup)

    def cancel(self, context: bpy.types.Context) -> None:
        cancel_setup()
        self._stop_timer(context)

    def _stop_timer(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if self._timer is not None and wm is not None:
            wm.event_timer_remove(self._timer)
        self._timer = None


class GANFIT_OT_setup_cancel(bpy.types.Operator):
    """Stop the backend set-up; the unfinished environment is removed"""

    bl_idname = "ganfit.setup_cancel"
    bl_label = "Cancel set-up"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return setup_running()

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        if _setup is not None:
            _setup.cancel()
        return {"FINISHED"}


class GANFIT_OT_detect_python(bpy.types.Operator):
    """Look again for a Python interpreter that can run the engine"""

    bl_idname = "ganfit.detect_python"
    bl_label = "Detect"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        found = detected_python(refresh=True)
        if found is None:
            self.report({"WARNING"}, "No Python with the GANFit engine found; click Set up backend")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Engine Python: {found.python} ({found.source})")
        return {"FINISHED"}


class GANFIT_AP_preferences(bpy.types.AddonPreferences):
    """Where the engine runs: a Python interpreter with ``ganfit`` installed."""

    bl_idname = ADDON_PACKAGE

    python_path: StringProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Engine Python",
        description=(
            "Python interpreter that has the ganfit engine installed; empty: found automatically "
            "($GANFIT_PYTHON, the Set up backend environment, ganfit or python3 on PATH)"
        ),
        subtype="FILE_PATH",
    )
    torch_build: EnumProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="PyTorch",
        description="Which PyTorch build Set up backend installs",
        items=[
            ("AUTO", "Automatic", "The CUDA build when this machine has an NVIDIA GPU, else the CPU-only "
             "build (macOS: PyPI's build for the CPU and the Apple GPU)"),
            ("CUDA", "CUDA (NVIDIA GPU)", "The CUDA build (about 3 GB to download, about 6 GB on disk); "
             "needs an NVIDIA GPU and its driver to be of use"),
            ("CPU", "CPU only", "The CPU-only build (about 350 MB to download, about 1 GB on disk)"),
        ],
        default="AUTO",
    )
    pip_index_url: StringProperty(  # type: ignore[valid-type]  # fake-bpy: props return None
        name="Package index",
        description="pip's index URL for Set up backend (a mirror); empty: PyPI or pip's own configuration",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        width = label_width(context)
        layout.prop(self, "python_path")
        if not self.python_path:
            row = layout.row()
            found = detected_python()
            text_column = row.column()
            if found is not None:
                wrapped_label(text_column, f"Found: {found.python} ({found.source})", width - 12, icon="CHECKMARK")
            else:
                wrapped_label(text_column, "No engine found: click Set up backend", width - 12, icon="INFO")
            row.operator(GANFIT_OT_detect_python.bl_idname, icon="VIEWZOOM")

        box = layout.box()
        wrapped_label(box, "Backend (the engine's own Python environment)", width, icon="CONSOLE")
        setup = _setup
        if setup is not None and not setup.progress.finished:
            progress = setup.progress
            box.progress(factor=progress.fraction, type="BAR", text=progress.stage)
            if progress.detail:
                wrapped_label(box, progress.detail, width)
            if progress.download is not None:
                box.progress(factor=progress.download, type="BAR", text=f"{progress.download:.0%} of this file")
            box.operator(GANFIT_OT_setup_cancel.bl_idname, icon="CANCEL")
            return
        row = box.row()
        row.prop(self, "torch_build")
        if sys.platform != "darwin":
            gpu = nvidia_gpu()
            wrapped_label(box, f"NVIDIA GPU found: {gpu}" if gpu else "No NVIDIA GPU found", width,
                          icon="CHECKMARK" if gpu else "INFO")
        wrapped_label(box, f"Installs {torch_build(context).summary()}", width, icon="IMPORT")
        box.prop(self, "pip_index_url")
        existing = complete_venv_python(venv_dir())
        box.operator(GANFIT_OT_setup_backend.bl_idname, icon="IMPORT",
                     text="Update backend" if existing else "Set up backend")
        wrapped_label(box, f"Folder: {venv_dir()}", width)
        if setup is not None:
            outcome = setup.progress
            wrapped_label(box, outcome.message, width, icon="CHECKMARK" if outcome.ok else "ERROR")
            if not outcome.ok:
                wrapped_label(box, f"Full output: {setup.log_path}", width, icon="BLANK1")


CLASSES = (GANFIT_OT_setup_backend, GANFIT_OT_setup_cancel, GANFIT_OT_detect_python, GANFIT_AP_preferences)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    detect_in_background()


def unregister() -> None:
    cancel_setup()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
