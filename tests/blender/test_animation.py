"""Face animation from an iPhone capture in real Blender (issue 18): a CSV in Live Link Face's
format keys a real reconstructed head's ARKit shape keys, with capture time on the right scene
frames; bad files are refused in one line and change nothing."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

from .conftest import empty_scene  # noqa: E402

# Live Link Face's columns after Timecode and BlendShapeCount, as the parser's test writes them.
from test_arkit_csv import LLF_ROTATIONS as ROTATIONS, LLF_SHAPES as SHAPES  # noqa: E402  (tests/ is on the path)

CAPTURE_FPS = 60
SECONDS = 3.0


def jaw(t: float) -> float:
    """JawOpen: a ramp from 0 to 1 over two seconds, then held."""
    return min(t / 2.0, 1.0)


def blink(t: float) -> float:
    """EyeBlinkLeft: one blink, fully closed at t = 0.5 s."""
    return max(0.0, 1.0 - abs(t - 0.5) / 0.1)


def write_live_link_csv(path: Path, seconds: float = SECONDS, extra: str = "MyCustomSmirk") -> Path:
    """A Live Link Face take as the app writes it: Timecode HH:MM:SS:FF.mmm at 60 fps (time of
    day, here from 14:03:52:28), BlendShapeCount 61, 52 blendshapes, 9 rotations, one unknown column."""
    header = ["Timecode", "BlendShapeCount", *SHAPES, *ROTATIONS, extra]
    first = ((14 * 60 + 3) * 60 + 52) * CAPTURE_FPS + 28
    lines = [",".join(header)]
    for i in range(round(seconds * CAPTURE_FPS) + 1):
        t, total = i / CAPTURE_FPS, first + i
        stamp = (f"{total // (3600 * CAPTURE_FPS):02d}:{total // (60 * CAPTURE_FPS) % 60:02d}:"
                 f"{total // CAPTURE_FPS % 60:02d}:{total % CAPTURE_FPS:02d}.000")
        values = {"JawOpen": jaw(t), "EyeBlinkLeft": blink(t), "MouthSmileLeft": 0.25}
        row = [stamp, "61", *(f"{values.get(n, 0.0):.6f}" for n in SHAPES)]
        row += [f"{0.2 * math.sin(t):.6f}"] * len(ROTATIONS) + ["0.5"]
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def head(installed_addon: str, engine_result: Path):
    """A real result imported with the add-on's scene_import into an empty 24 fps scene, selected."""
    empty_scene()
    scene_import = importlib.import_module(f"{installed_addon}.scene_import")
    built = scene_import.import_result(bpy.context, engine_result)
    scene_import.select_only(bpy.context, built.head)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.frame_start, scene.frame_end = 1, 250
    return built.head


def _curves(obj) -> dict:
    """{data path: [(frame, value), ...]} of the head's shape-key animation."""
    anim = obj.data.shape_keys.animation_data
    if anim is None or anim.action is None:
        return {}
    bag = anim.action.layers[0].strips[0].channelbag(anim.action_slot)
    return {fc.data_path: [tuple(k.co) for k in fc.keyframe_points] for fc in bag.fcurves}


def test_capture_keys_the_shape_keys_on_the_right_frames(head, installed_addon: str, tmp_path: Path) -> None:
    take = write_live_link_csv(tmp_path / "take.csv")
    scene = bpy.context.scene
    assert bpy.ops.ganfit.import_face_animation(filepath=str(take)) == {"FINISHED"}
    keys = head.data.shape_keys.key_blocks
    assert len(keys) == 53
    curves = _curves(head)
    assert len(curves) == 52  # every shape key, none twice
    assert all(len(points) == 181 for points in curves.values())  # one key per captured row
    assert scene.frame_end == 1 + 72  # the range covers the 3 s capture at 24 fps

    # scene frame = frame_start + t * 24: t = 1 s is frame 25, the blink's peak (t = 0.5 s) frame 13
    for t in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        scene.frame_set(round(1 + t * 24))
        assert keys["jawOpen"].value == pytest.approx(jaw(t), abs=1e-5), t
        assert keys["eyeBlinkLeft"].value == pytest.approx(blink(t), abs=1e-5), t
        assert keys["mouthSmileLeft"].value == pytest.approx(0.25, abs=1e-5)
        assert keys["browInnerUp"].value == pytest.approx(0.0, abs=1e-6)
    # between captured rows the curve is the straight line between them: frame 2 is t = 1/24 s
    scene.frame_set(2)
    assert keys["jawOpen"].value == pytest.approx(jaw(1 / 24), abs=1e-5)
    # the head's rotation columns are not applied: the head stays where its camera sees it
    assert tuple(head.rotation_euler) == (0.0, 0.0, 0.0)

    # importing again replaces the curves, it does not add a second set of keys
    assert bpy.ops.ganfit.import_face_animation(filepath=str(take), whole_frames=True) == {"FINISHED"}
    curves = _curves(head)
    assert len(curves) == 52 and all(len(points) == 73 for points in curves.values())
    assert [f for f, _ in curves['key_blocks["jawOpen"].value'][:3]] == [1.0, 2.0, 3.0]
    scene.frame_set(25)
    assert keys["jawOpen"].value == pytest.approx(0.5, abs=1e-5)


def test_report_names_unmatched_columns(head, installed_addon: str, tmp_path: Path) -> None:
    animation_ops = importlib.import_module(f"{installed_addon}.animation_ops")
    arkit_csv = importlib.import_module(f"{installed_addon}.arkit_csv")
    capture = arkit_csv.read_capture(write_live_link_csv(tmp_path / "take.csv", seconds=1.0))
    summary = animation_ops.apply_capture(bpy.context.scene, head, capture)
    message = summary.message()
    assert "Keyed 52 shape keys, 61 keys each" in message and "frames 1-25 at 24 fps" in message
    assert message.endswith("unmatched columns: MyCustomSmirk") and "\n" not in message
    assert "HeadYaw" not in message and "timecode at 60 fps (detected)" in message


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("Timecode,BlendShapeCount,JawOpen\n14:00:00:01.000,61,0.1\n14:00:00:02.000,61,wide\n",
         "take.csv line 3, column JawOpen: 'wide' is not a number"),
        ("Timecode,BlendShapeCount,JawOpen\n14:00:00:02.000,61,0.1\n14:00:00:01.000,61,0.2\n",
         "take.csv line 3: time 14:00:00:01.000 is not after the row before"),
        ("Timecode,Colour\n14:00:00:01.000,red\n", "take.csv has no ARKit blendshape columns"),
        ("\x89PNG\r\n\x1a\n\x00\x00", "take.csv is not a CSV file"),
    ],
)
def test_bad_csv_is_refused_in_one_line_and_changes_nothing(head, tmp_path: Path, body: str, error: str) -> None:
    scene = bpy.context.scene
    good = write_live_link_csv(tmp_path / "good.csv", seconds=1.0)
    assert bpy.ops.ganfit.import_face_animation(filepath=str(good), set_frame_range=False) == {"FINISHED"}
    before, end = _curves(head), scene.frame_end
    bad = tmp_path / "take.csv"
    bad.write_bytes(body.encode("latin-1"))
    with pytest.raises(RuntimeError, match=error) as caught:
        bpy.ops.ganfit.import_face_animation(filepath=str(bad))
    assert str(caught.value).count("\n") <= 1  # Blender's "Error: " prefix line and the one line
    assert _curves(head) == before and scene.frame_end == end == 250


def test_bad_csv_on_a_fresh_head_adds_no_animation(head, tmp_path: Path) -> None:
    bad = tmp_path / "take.csv"
    bad.write_text("Timecode,BlendShapeCount,JawOpen\n14:00:00:01.000,61,\n", encoding="utf-8")
    actions = len(bpy.data.actions)
    with pytest.raises(RuntimeError, match="the value is empty"):
        bpy.ops.ganfit.import_face_animation(filepath=str(bad))
    assert head.data.shape_keys.animation_data is None and len(bpy.data.actions) == actions


def test_a_minute_at_60_fps(head, tmp_path: Path) -> None:
    take = write_live_link_csv(tmp_path / "minute.csv", seconds=60.0)
    assert bpy.ops.ganfit.import_face_animation(filepath=str(take)) == {"FINISHED"}
    curves = _curves(head)
    assert len(curves) == 52 and all(len(points) == 3601 for points in curves.values())
    assert bpy.context.scene.frame_end == 1 + 60 * 24


def test_needs_a_head_and_is_in_the_menus(head, installed_addon: str) -> None:
    op = sys.modules[f"{installed_addon}.animation_ops"].GANFIT_OT_import_face_animation
    assert {"REGISTER", "UNDO"} <= set(op.bl_options)
    assert bpy.ops.ganfit.import_face_animation.poll()

    class Recorder:
        """Stands in for a UILayout: records the operators drawn."""

        def __init__(self, log: list) -> None:
            self.log, self.layout = log, self

        def operator(self, idname: str, **kw) -> None:
            self.log.append(idname)

        def row(self, **kw) -> "Recorder":
            return self

        box = column = row

        def label(self, **kw) -> None:
            pass

        def prop(self, *args, **kw) -> None:
            pass

    menu: list = []
    sys.modules[installed_addon]._menu_import(Recorder(menu), bpy.context)
    assert "ganfit.import_face_animation" in menu
    panel: list = []
    bpy.types.GANFIT_PT_expressions.draw(Recorder(panel), bpy.context)
    assert "ganfit.import_face_animation" in panel

    head.select_set(False)
    bpy.context.view_layer.objects.active = None
    assert not bpy.ops.ganfit.import_face_animation.poll()
