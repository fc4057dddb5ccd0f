"""Export the active GANFit head with its expression shape keys through Blender's own glTF
and FBX exporters (issue 3, item 6), so renders and game engines get the sliders too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, StringProperty

from .expressions import ganfit_head
from .scene_import import select_only


class GANFIT_OT_export_head(bpy.types.Operator):
    """Export the active GANFit head (mesh, texture, expression shape keys) as glTF binary or FBX"""

    bl_idname = "ganfit.export_head"
    bl_label = "Export Head"
    bl_options = {"REGISTER"}

    filepath: StringProperty(subtype="FILE_PATH")  # type: ignore[valid-type]
    format: EnumProperty(  # type: ignore[valid-type]
        name="Format",
        items=(("GLB", "glTF binary (.glb)", "Shape keys become morph targets"),
               ("FBX", "FBX (.fbx)", "Shape keys become blend shapes")),
        default="GLB",
    )

    @classmethod
    def poll(cls, context: Any) -> bool:
        return ganfit_head(context) is not None

    def execute(self, context: Any) -> set[str]:
        if not self.filepath:
            self.report({"ERROR"}, "Choose a file to export to")
            return {"CANCELLED"}
        suffix = ".glb" if self.format == "GLB" else ".fbx"
        path = Path(bpy.path.abspath(self.filepath)).with_suffix(suffix)
        if not path.parent.is_dir():
            self.report({"ERROR"}, f"{path.parent}: folder does not exist; choose an existing folder")
            return {"CANCELLED"}
        head = ganfit_head(context)
        select_only(context, head)
        if self.format == "GLB":
            result = bpy.ops.export_scene.gltf(
                filepath=str(path), export_format="GLB", use_selection=True,
                export_morph=True, export_apply=False,
            )
        else:
            result = bpy.ops.export_scene.fbx(
                filepath=str(path), use_selection=True, object_types={"MESH"},
                path_mode="COPY", embed_textures=True, use_mesh_modifiers=False,
            )
        if result != {"FINISHED"}:
            self.report({"ERROR"}, f"Blender's exporter did not finish ({result}); see the system console")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}

    def invoke(self, context: Any, event: Any) -> set[str]:
        if not self.filepath:
            self.filepath = f"{ganfit_head(context).name}.glb"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


CLASSES = (GANFIT_OT_export_head,)
