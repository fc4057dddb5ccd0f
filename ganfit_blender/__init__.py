"""GANFit for Blender: reconstruct a face from a photo, or import a ganfit result, as a
textured, lit, camera-matched head with expression sliders.

This add-on never imports torch: the engine runs as a separate process (``engine_client``,
started by **Reconstruct Face** in ``reconstruct_op``) in a Python environment of its own
(``preferences``: chosen, detected, or made by **Set up backend** in ``backend_setup``), and the
result folders it writes are read here with numpy alone (``result_reader``).
"""

from __future__ import annotations

import sys

try:  # first: result_reader, scene_import and live_preview need it, and some Linux Blenders lack it
    import numpy  # noqa: F401
except ModuleNotFoundError as _missing:
    raise ImportError(
        f"GANFit needs numpy in Blender's Python {sys.version_info.major}.{sys.version_info.minor}, which this "
        f"Blender build lacks: install your distribution's numpy for it (Debian/Ubuntu: sudo apt install "
        f"python3-numpy) or use Blender from blender.org, which bundles numpy"
    ) from _missing

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import bpy
from bpy.props import BoolProperty, StringProperty

from . import (animation_ops, export_ops, expressions, preferences, reconstruct_op, result_reader, result_storage,
               scene_import)

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems

log = logging.getLogger(__name__)


class GANFIT_OT_import_result(scene_import.SceneChangeProperties, bpy.types.Operator):
    """Import a ganfit result folder: head with expression shape keys, material, light,
    ambient world and the fitted camera"""

    bl_idname = "ganfit.import_result"
    bl_label = "Import GANFit Result"
    bl_options = {"REGISTER", "UNDO"}

    # bpy.props functions are typed as returning None in fake-bpy-module; in Blender they
    # return the property definitions that these annotations declare.
    directory: StringProperty(  # type: ignore[valid-type]
        name="Result folder",
        description="Folder holding result.json, as written by ganfit reconstruct",
        subtype="DIR_PATH",
    )
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        if not self.directory:
            self.report({"ERROR"}, "Choose a ganfit result folder (the folder holding result.json)")
            return {"CANCELLED"}
        try:
            built = scene_import.import_result(context, Path(bpy.path.abspath(self.directory)), self.import_options())
        except result_reader.ResultError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:  # a bug: report it, keep Blender's scene clean (already rolled back)
            log.exception("import of %s failed", self.directory)
            self.report({"ERROR"}, f"Import failed ({type(exc).__name__}: {exc}); see the system console")
            return {"CANCELLED"}
        scene_import.select_only(context, built.head)
        self.report({"INFO"}, f"Imported {built.collection.name}: {built.where()}")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        wm = context.window_manager
        if wm is None:
            return self.execute(context)
        wm.fileselect_add(self)
        return {"RUNNING_MODAL"}


class GANFIT_PT_main(bpy.types.Panel):
    """GANFit tab in the 3D viewport's sidebar."""

    bl_label = "GANFit"
    bl_idname = "GANFIT_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GANFit"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        if layout is None:
            return
        reconstruct_op.draw_panel(layout, context)
        layout.operator(GANFIT_OT_import_result.bl_idname, icon="IMPORT")
        obj = context.active_object
        if obj is not None and "ganfit_result" in obj.keys():
            layout.label(text=Path(str(obj["ganfit_result"])).name, icon="USER")
            keys = obj.data.shape_keys if isinstance(obj.data, bpy.types.Mesh) else None
            if keys is not None:
                layout.label(text=f"{len(keys.key_blocks) - 1} expression shape keys")
            layout.operator(export_ops.GANFIT_OT_export_head.bl_idname, icon="EXPORT")


_CLASSES = (GANFIT_OT_import_result, GANFIT_PT_main, *expressions.CLASSES, *export_ops.CLASSES,
            *animation_ops.CLASSES)


def _menu_import(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    if self.layout is not None:
        self.layout.operator(GANFIT_OT_import_result.bl_idname, text="GANFit Result (folder)")
        self.layout.operator(animation_ops.GANFIT_OT_import_face_animation.bl_idname,
                             text="GANFit Face Animation (Live Link Face CSV)")


def register() -> None:
    preferences.register()
    reconstruct_op.register()
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    result_storage.register()


def unregister() -> None:
    result_storage.unregister()
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
    reconstruct_op.unregister()  # also stops the engine process
    preferences.unregister()  # also stops a running backend set-up
