"""Export the active GANFit head with its expression shape keys through Blender's own glTF
and FBX exporters (issue 3, item 6), so renders and game engines get the sliders too."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import bpy
from bpy.props import EnumProperty, StringProperty

from .expressions import ganfit_head
from .scene_import import select_only

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems


class GANFIT_OT_export_head(bpy.types.Operator):
    """Export the active GANFit head (mesh, texture, expression shape keys) as glTF binary or FBX"""

    bl_idname = "ganfit.export_head"
    bl_label = "Export Head"
    bl_options = {"REGISTER"}

    # bpy.props functions are typed as returning None in fake-bpy-module; in Blender they
    # return the property definitions that these annotations declare.
    filepath: StringProperty(subtype="FILE_PATH")  # type: ignore[valid-type]
    format: EnumProperty(  # type: ignore[valid-type]
        name="Format",
        items=(("GLB", "glTF binary (.glb)", "Shape keys become morph targets"),
               ("FBX", "FBX (.fbx)", "Shape keys become blend shapes")),
        default="GLB",
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return ganfit_head(context) is not None

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        if not self.filepath:
            self.report({"ERROR"}, "Choose a file to export to")
            return {"CANCELLED"}
        suffix = ".glb" if self.format == "GLB" else ".fbx"
        path = Path(bpy.path.abspath(self.filepath)).with_suffix(suffix)
        if not path.parent.is_dir():
            self.report({"ERROR"}, f"{path.parent}: folder does not exist; choose an existing folder")
            return {"CANCELLED"}
        head = ganfit_head(context)
        if head is None:
            self.report({"ERROR"}, "Select a GANFit head to export")
            return {"CANCELLED"}
        select_only(context, head)
        # fake-bpy types operator calls as returning None; Blender returns {'FINISHED'} etc.
        result: set[str]
        if self.format == "GLB":
            result = cast("set[str]", bpy.ops.export_scene.gltf(
                filepath=str(path), export_format="GLB", use_selection=True,
                export_morph=True, export_apply=False,
            ))
        else:
            result = cast("set[str]", bpy.ops.export_scene.fbx(
                filepath=str(path), use_selection=True, object_types={"MESH"},
                path_mode="COPY", embed_textures=True, use_mesh_modifiers=False,
            ))
        if result != {"FINISHED"}:
            self.report({"ERROR"}, f"Blender's exporter did not finish ({result}); see the system console")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        head = ganfit_head(context)
        if not self.filepath:
            self.filepath = f"{head.name if head is not None else 'head'}.glb"
        wm = context.window_manager
        if wm is None:
            return self.execute(context)
        wm.fileselect_add(self)
        return {"RUNNING_MODAL"}


CLASSES = (GANFIT_OT_export_head,)
