"""Expression sliders: the 52 ARKit shape keys grouped as artists look for them, with buttons
to go back to neutral or to the fitted expression (issue 3, item 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bpy

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems

#: Custom property on the head object: {shape key name: fitted weight}, set on import.
FITTED_PROPERTY = "ganfit_fitted_expression"

#: Panel groups by ARKit name prefix, in the order they are drawn.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Brows", ("brow",)),
    ("Eyes", ("eye",)),
    ("Cheeks", ("cheek",)),
    ("Nose", ("nose",)),
    ("Jaw", ("jaw",)),
    ("Mouth", ("mouth",)),
    ("Tongue", ("tongue",)),
)


def group_of(name: str) -> str:
    """The panel group of an ARKit shape key name ('Other' for anything unknown)."""
    for group, prefixes in GROUPS:
        if name.startswith(prefixes):
            return group
    return "Other"


def ganfit_head(context: bpy.types.Context) -> bpy.types.Object | None:
    """The active object if it is an imported GANFit head with shape keys."""
    obj = context.active_object
    if obj is None or not isinstance(obj.data, bpy.types.Mesh) or FITTED_PROPERTY not in obj.keys():
        return None
    return obj if obj.data.shape_keys is not None else None


def _shape_keys(obj: bpy.types.Object) -> list[bpy.types.ShapeKey]:
    """The expression shape keys (all but the Basis) of a head ``ganfit_head`` returned."""
    mesh = obj.data
    if not isinstance(mesh, bpy.types.Mesh) or mesh.shape_keys is None:
        return []
    return list(mesh.shape_keys.key_blocks)[1:]


def _set_weights(obj: bpy.types.Object, weights: dict[str, float]) -> None:
    for key in _shape_keys(obj):
        key.value = float(weights.get(key.name, 0.0))


class _NeedsHead:
    """Operators that act on the active GANFit head: greyed out without one."""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return ganfit_head(context) is not None


class GANFIT_OT_expression_reset(_NeedsHead, bpy.types.Operator):
    """Set every expression shape key to 0: the neutral face of the fitted identity"""

    bl_idname = "ganfit.expression_reset"
    bl_label = "Neutral"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        obj = ganfit_head(context)
        if obj is None:
            return {"CANCELLED"}
        _set_weights(obj, {})
        return {"FINISHED"}


class GANFIT_OT_expression_restore(_NeedsHead, bpy.types.Operator):
    """Set the expression shape keys back to the weights fitted to the photo"""

    bl_idname = "ganfit.expression_restore"
    bl_label = "Fitted"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        obj = ganfit_head(context)
        if obj is None:
            return {"CANCELLED"}
        fitted: Any = obj[FITTED_PROPERTY]  # an IDPropertyGroup: {shape key name: weight}
        _set_weights(obj, {str(k): float(v) for k, v in fitted.to_dict().items()})
        return {"FINISHED"}


class GANFIT_PT_expressions(bpy.types.Panel):
    """Expression sliders of the active GANFit head, grouped by face region."""

    bl_label = "Expressions"
    bl_idname = "GANFIT_PT_expressions"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GANFit"
    bl_parent_id = "GANFIT_PT_main"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return ganfit_head(context) is not None

    def draw(self, context: bpy.types.Context) -> None:
        obj = ganfit_head(context)
        layout = self.layout
        if obj is None or layout is None:
            return
        row = layout.row(align=True)
        row.operator(GANFIT_OT_expression_reset.bl_idname, icon="LOOP_BACK")
        row.operator(GANFIT_OT_expression_restore.bl_idname, icon="RECOVER_LAST")
        # by bl_idname: animation_ops imports this module (issue 18)
        layout.operator("ganfit.import_face_animation", text="Import Face Animation (CSV)", icon="ACTION")
        keys = _shape_keys(obj)
        for group in [g for g, _ in GROUPS] + ["Other"]:
            members = [k for k in keys if group_of(k.name) == group]
            if not members:
                continue
            box = layout.box()
            box.label(text=group)
            column = box.column(align=True)
            for key in members:
                column.prop(key, "value", text=key.name, slider=True)


CLASSES = (GANFIT_OT_expression_reset, GANFIT_OT_expression_restore, GANFIT_PT_expressions)
