"""Animate the head's 52 expression shape keys from an iPhone capture (issue 18): a Live Link
Face CSV (or an ARKit blendshape CSV of the same form), read by ``arkit_csv``, becomes one
F-curve per shape key on the head's shape-key datablock.

Capture time t (seconds from the first row) lands on scene frame ``frame_start + t * fps`` at
the scene's frame rate, so a 60 fps capture plays at its own speed in a 24 fps scene. Keys are
written in bulk (``keyframe_points.add`` + ``foreach_set``), with linear interpolation so the
curve between two captured rows is the straight line between them, as the phone measured it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from .arkit_csv import Capture, CaptureError, read_capture, resample
from .expressions import ganfit_head

if TYPE_CHECKING:
    from bpy.stub_internal.rna_enums import OperatorReturnItems

__all__ = ["AnimationSummary", "apply_capture", "GANFIT_OT_import_face_animation", "CLASSES"]

log = logging.getLogger(__name__)

#: The value of KeyframePoint.interpolation's LINEAR item, for foreach_set (enums go as ints).
_LINEAR = 1
#: Name of the F-curve group the capture's curves go into.
GROUP_NAME = "Face capture"


@dataclass
class AnimationSummary:
    """What an import keyed, for its report."""

    keyed: list[str]  # shape keys animated
    keys_per_curve: int  # keyframes on each F-curve
    first_frame: float
    last_frame: float
    scene_fps: float
    capture: Capture
    missing_on_head: list[str] = field(default_factory=list)  # capture curves this head lacks

    def message(self) -> str:
        """One line for the operator's report."""
        cap = self.capture
        rate = ""
        if cap.timecode_fps is not None:
            rate = f", timecode at {cap.timecode_fps:g} fps{' (detected)' if cap.fps_detected else ''}"
        text = (f"Keyed {len(self.keyed)} shape keys, {self.keys_per_curve} keys each: "
                f"{cap.duration:.2f} s{rate} on frames {self.first_frame:g}-{self.last_frame:g} "
                f"at {self.scene_fps:g} fps")
        if cap.unmatched:
            text += f"; unmatched columns: {', '.join(cap.unmatched)}"
        if self.missing_on_head:
            text += f"; not on this head: {', '.join(self.missing_on_head)}"
        return text


def scene_fps(scene: bpy.types.Scene) -> float:
    """The scene's frame rate, fps / fps_base (24 / 1.001 for 23.98)."""
    return float(scene.render.fps) / float(scene.render.fps_base)


def _channelbag(key: bpy.types.Key, action_name: str) -> bpy.types.ActionChannelbag:
    """The F-curve container of the shape-key datablock's action slot, created if missing
    (Blender 5's slotted actions: action > layer > keyframe strip > channelbag per slot)."""
    anim = key.animation_data or key.animation_data_create()
    if anim.action is None:
        anim.action = bpy.data.actions.new(action_name)
    action = anim.action
    if anim.action_slot is None:
        anim.action_slot = action.slots.new(id_type="KEY", name=key.name)
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    if not isinstance(strip, bpy.types.ActionKeyframeStrip):
        raise RuntimeError(f"action {action.name} has a strip Blender cannot key; remove the head's shape-key action")
    return strip.channelbag(anim.action_slot, ensure=True)


def apply_capture(scene: bpy.types.Scene, head: bpy.types.Object, capture: Capture,
                  whole_frames: bool = False, set_frame_range: bool = True) -> AnimationSummary:
    """Key ``head``'s shape keys from ``capture`` starting at the scene's first frame. Each
    capture row becomes a key at its exact (sub-)frame, or with ``whole_frames`` the curve is
    sampled once per scene frame. Existing F-curves of the keyed shape keys are replaced."""
    mesh = head.data
    if not isinstance(mesh, bpy.types.Mesh) or mesh.shape_keys is None:
        raise CaptureError(f"{head.name} has no shape keys; select a GANFit head")
    key = mesh.shape_keys
    names = [b.name for b in list(key.key_blocks)[1:]]  # all but the Basis
    folded = {n.lower(): n for n in names}
    targets: dict[str, str] = {}  # capture curve -> shape key name
    missing: list[str] = []
    for name in capture.curves:
        block = name if name in names else folded.get(name.lower())
        if block is None:
            missing.append(name)
        else:
            targets[name] = block
    if not targets:
        raise CaptureError(f"{head.name} has none of the capture's shape keys; select a GANFit head")

    fps = scene_fps(scene)
    start = float(scene.frame_start)
    if whole_frames:
        count = math.floor(capture.duration * fps + 1e-6) + 1
        sample_times = [i / fps for i in range(count)]
        frames = [start + i for i in range(count)]
        values = {n: resample(capture.times, v, sample_times) for n, v in capture.curves.items()}
    else:
        frames = [start + t * fps for t in capture.times]
        values = capture.curves

    bag = _channelbag(key, f"{head.name} face capture")
    group = bag.groups.get(GROUP_NAME) or bag.groups.new(GROUP_NAME)
    n = len(frames)
    for name, block in targets.items():
        path = f'key_blocks["{bpy.utils.escape_identifier(block)}"].value'
        old = bag.fcurves.find(path)
        if old is not None:
            bag.fcurves.remove(old)
        curve = bag.fcurves.new(path)
        curve.group = group
        points = curve.keyframe_points
        points.add(n)
        co = [0.0] * (2 * n)
        co[0::2] = frames
        co[1::2] = values[name]
        points.foreach_set("co", co)
        points.foreach_set("interpolation", [_LINEAR] * n)
        curve.update()
    if set_frame_range:
        scene.frame_end = max(scene.frame_start, math.ceil(frames[-1] - 1e-6))
    scene.frame_set(scene.frame_current)  # the sliders show the keyed values now
    summary = AnimationSummary(keyed=sorted(targets.values()), keys_per_curve=n, first_frame=frames[0],
                               last_frame=frames[-1], scene_fps=fps, capture=capture,
                               missing_on_head=missing)
    log.info("%s: %s", head.name, summary.message())
    return summary


class GANFIT_OT_import_face_animation(bpy.types.Operator):
    """Key the selected GANFit head's expression shape keys from an iPhone face capture
    (Live Link Face CSV, or an ARKit blendshape CSV)"""

    bl_idname = "ganfit.import_face_animation"
    bl_label = "Import Face Animation (Live Link Face CSV)"
    bl_options = {"REGISTER", "UNDO"}

    # bpy.props functions are typed as returning None in fake-bpy-module; in Blender they
    # return the property definitions that these annotations declare.
    filepath: StringProperty(  # type: ignore[valid-type]
        name="CSV file", description="Live Link Face or ARKit blendshape CSV", subtype="FILE_PATH",
    )
    filter_glob: StringProperty(default="*.csv;*.txt", options={"HIDDEN"})  # type: ignore[valid-type]
    capture_fps: FloatProperty(  # type: ignore[valid-type]
        name="Capture rate",
        description=("Frame rate of the Timecode's frame numbers (Live Link Face records at 60 fps; "
                     "also the rate of a frame column)"),
        default=60.0, min=1.0, max=240.0,
    )
    detect_fps: BoolProperty(  # type: ignore[valid-type]
        name="Detect rate from Timecode",
        description="Use the rate the Timecode's frame numbers show when they wrap to a new second",
        default=True,
    )
    whole_frames: BoolProperty(  # type: ignore[valid-type]
        name="Key whole frames only",
        description=("One key per scene frame, sampled from the capture; off: one key per captured "
                     "row at its exact (sub-)frame"),
        default=False,
    )
    set_frame_range: BoolProperty(  # type: ignore[valid-type]
        name="Set frame range",
        description="End the scene's frame range where the capture ends",
        default=True,
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return ganfit_head(context) is not None

    def execute(self, context: bpy.types.Context) -> set[OperatorReturnItems]:
        head = ganfit_head(context)
        scene = context.scene
        if head is None or scene is None:
            self.report({"ERROR"}, "Select a GANFit head to animate (import or reconstruct one first)")
            return {"CANCELLED"}
        if not self.filepath:
            self.report({"ERROR"}, "Choose a Live Link Face CSV file to import")
            return {"CANCELLED"}
        try:
            capture = read_capture(Path(bpy.path.abspath(self.filepath)), self.capture_fps, self.detect_fps)
            summary = apply_capture(scene, head, capture, self.whole_frames, self.set_frame_range)
        except CaptureError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        unmatched = capture.unmatched or summary.missing_on_head
        self.report({"WARNING"} if unmatched else {"INFO"}, summary.message())
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[OperatorReturnItems]:
        wm = context.window_manager
        if wm is None:
            return self.execute(context)
        wm.fileselect_add(self)
        return {"RUNNING_MODAL"}


CLASSES = (GANFIT_OT_import_face_animation,)
