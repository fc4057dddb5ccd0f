"""Where Reconstruct Face keeps its result folders, so that results outlive the session
(issue 18, item 1).

Blender deletes its session temporary folder when it quits, so results written there were lost
with an unsaved file: after saving and reopening, the head rendered pink and head.glb/head.obj
were gone. Now:
- before the .blend is first saved, results go to the extension's user folder, which lasts;
- when the file is saved, the result folders that this scene uses and that live in that user
  folder move beside the .blend, into ``ganfit_results/``, and the images and properties that
  point at them follow before the file is written, so the saved file and its results travel
  together. Results the user imported from elsewhere stay where they are.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import bpy
from bpy.app.handlers import persistent

log = logging.getLogger(__name__)

#: The folder beside a saved .blend that holds its results.
RESULTS_FOLDER = "ganfit_results"
#: Custom property naming an object's or collection's result folder (set by scene_import).
RESULT_PROPERTY = "ganfit_result"


def lasting_results_root() -> Path:
    """The extension's own user folder for results of unsaved files (kept across sessions)."""
    try:
        return Path(bpy.utils.extension_path_user(__package__, path="results", create=True))
    except (ValueError, AttributeError, TypeError):  # installed as a legacy add-on, not an extension
        return Path(bpy.utils.user_resource("DATAFILES", path="ganfit/results", create=True))


def results_root(blend_path: str = "") -> Path:
    """``ganfit_results`` beside the saved .blend, or the lasting folder for an unsaved file."""
    blend = blend_path or bpy.data.filepath
    return Path(blend).parent / RESULTS_FOLDER if blend else lasting_results_root()


def _unique(folder: Path) -> Path:
    candidate, n = folder, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = folder.with_name(f"{folder.name}_{n}")
    return candidate


def new_result_folder(photo: Path) -> Path:
    """A new, not yet existing result folder for ``photo`` under ``results_root()``."""
    base = results_root()
    base.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", photo.stem).lstrip(".") or "face"
    return _unique(base / stem)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _image_path(image: bpy.types.Image) -> Path | None:
    if image.packed_file is not None or not image.filepath or image.source != "FILE":
        return None
    return Path(bpy.path.abspath(image.filepath, library=image.library))


def _holders() -> list[Any]:
    """Objects and collections that name a result folder."""
    return [item for items in (bpy.data.objects, bpy.data.collections) for item in items
            if RESULT_PROPERTY in item.keys()]


def used_lasting_results() -> list[Path]:
    """Result folders in the lasting user folder that the open file uses (images, heads)."""
    root = lasting_results_root()
    folders: list[Path] = []
    candidates = [Path(str(item[RESULT_PROPERTY])) for item in _holders()]
    candidates += [path.parent for image in bpy.data.images if (path := _image_path(image)) is not None]
    for folder in candidates:
        if folder.is_dir() and _inside(folder, root) and folder.resolve() != root.resolve():
            # the result folder is the child of the root that holds this path
            top = root.resolve() / folder.resolve().relative_to(root.resolve()).parts[0]
            if top not in folders:
                folders.append(top)
    return folders


def move_results_beside(blend_path: str) -> dict[Path, Path]:
    """Move the lasting results the file uses beside ``blend_path`` and point the file's images
    and heads at their new place; returns {old folder: new folder}. A folder that cannot be
    moved stays where it is (still lasting) and is logged: nothing is ever lost."""
    target_root = Path(blend_path).parent / RESULTS_FOLDER
    moved: dict[Path, Path] = {}
    for folder in used_lasting_results():
        destination = _unique(target_root / folder.name)
        try:
            target_root.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(destination))
        except OSError as exc:
            log.warning("could not move %s beside %s (%s); it stays in the extension's user folder",
                        folder, blend_path, exc)
            if folder.exists() and destination.exists():
                shutil.rmtree(destination, ignore_errors=True)  # a half copy across file systems
            continue
        moved[folder] = destination
    if moved:
        _repoint(moved)
        log.info("moved %d result folder(s) beside %s", len(moved), blend_path)
    return moved


def _moved_path(path: Path, moved: dict[Path, Path]) -> Path | None:
    resolved = path.resolve()
    for old, new in moved.items():
        try:
            return new / resolved.relative_to(old)
        except ValueError:
            continue
    return None


def _repoint(moved: dict[Path, Path]) -> None:
    for image in bpy.data.images:
        path = _image_path(image)
        new = _moved_path(path, moved) if path is not None else None
        if new is not None:
            image.filepath = str(new)  # made relative by the save itself (relative_remap)
    for item in _holders():
        new = _moved_path(Path(str(item[RESULT_PROPERTY])), moved)
        if new is not None:
            item[RESULT_PROPERTY] = str(new)


@persistent  # type: ignore[untyped-decorator]  # bpy's stubs leave it untyped
def _before_save(filepath: str = "", *_args: Any) -> None:
    """save_pre: Blender passes the path being written (the new one on Save As)."""
    if not filepath:
        return
    try:
        move_results_beside(filepath)
    except Exception:  # noqa: BLE001 - a handler must never stop the user's save
        log.exception("keeping results beside %s failed", filepath)


def register() -> None:
    if _before_save not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(_before_save)


def unregister() -> None:
    if _before_save in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(_before_save)
