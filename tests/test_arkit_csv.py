"""The add-on's face-capture CSV reader (ganfit_blender/arkit_csv.py) without Blender: Live Link
Face timing and names, plain ARKit CSVs, and one-line refusals of files it cannot read."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ganfit_blender"))
import arkit_csv  # noqa: E402  (bpy-free module of the add-on, imported on its own)

sys.path.pop(0)

from arkit_csv import ARKIT_NAMES, CaptureError, parse_capture, read_capture, resample  # noqa: E402

#: Live Link Face's 52 blendshape columns, in the order the app writes them (ARKit's order).
LLF_SHAPES = (
    "EyeBlinkLeft EyeLookDownLeft EyeLookInLeft EyeLookOutLeft EyeLookUpLeft EyeSquintLeft EyeWideLeft "
    "EyeBlinkRight EyeLookDownRight EyeLookInRight EyeLookOutRight EyeLookUpRight EyeSquintRight EyeWideRight "
    "JawForward JawRight JawLeft JawOpen MouthClose MouthFunnel MouthPucker MouthRight MouthLeft "
    "MouthSmileLeft MouthSmileRight MouthFrownLeft MouthFrownRight MouthDimpleLeft MouthDimpleRight "
    "MouthStretchLeft MouthStretchRight MouthRollLower MouthRollUpper MouthShrugLower MouthShrugUpper "
    "MouthPressLeft MouthPressRight MouthLowerDownLeft MouthLowerDownRight MouthUpperUpLeft MouthUpperUpRight "
    "BrowDownLeft BrowDownRight BrowInnerUp BrowOuterUpLeft BrowOuterUpRight CheekPuff CheekSquintLeft "
    "CheekSquintRight NoseSneerLeft NoseSneerRight TongueOut"
).split()
LLF_ROTATIONS = "HeadYaw HeadPitch HeadRoll LeftEyeYaw LeftEyePitch LeftEyeRoll RightEyeYaw RightEyePitch RightEyeRoll".split()


def jaw(t: float) -> float:
    """JawOpen: a ramp from 0 to 1 over two seconds."""
    return min(t / 2.0, 1.0)


def blink(t: float) -> float:
    """EyeBlinkLeft: one blink, closed at t = 0.5 s."""
    return max(0.0, 1.0 - abs(t - 0.5) / 0.1)


def live_link_csv(seconds: float = 3.0, fps: int = 60, start: tuple[int, int, int, int] = (14, 3, 52, 28),
                  extra: str = "") -> str:
    """A Live Link Face recording: Timecode HH:MM:SS:FF.mmm at ``fps``, BlendShapeCount 61, the
    52 blendshapes, the 9 head and eye rotations (and ``extra``, a column of zeros)."""
    header = ["Timecode", "BlendShapeCount", *LLF_SHAPES, *LLF_ROTATIONS] + ([extra] if extra else [])
    h, m, s, f = start
    first = ((h * 60 + m) * 60 + s) * fps + f
    lines = [",".join(header)]
    for i in range(round(seconds * fps) + 1):
        t = i / fps
        total = first + i
        stamp = (f"{total // (3600 * fps) % 24:02d}:{total // (60 * fps) % 60:02d}:"
                 f"{total // fps % 60:02d}:{total % fps:02d}.000")
        values = {"JawOpen": jaw(t), "EyeBlinkLeft": blink(t)}
        row = [stamp, "61"] + [f"{values.get(n, 0.0):.6f}" for n in LLF_SHAPES]
        row += [f"{0.1 * math.sin(t):.6f}"] * len(LLF_ROTATIONS) + (["0"] if extra else [])
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def test_live_link_face_timing_and_names() -> None:
    cap = parse_capture(live_link_csv(), "take.csv")
    assert len(cap.times) == 181 and cap.duration == pytest.approx(3.0)
    assert cap.times == pytest.approx([i / 60 for i in range(181)], abs=1e-9)
    assert sorted(cap.curves) == sorted(ARKIT_NAMES)  # all 52, under ARKit's names
    jaw_open, blink_left = cap.curves["jawOpen"], cap.curves["eyeBlinkLeft"]
    assert jaw_open[60] == pytest.approx(0.5) and jaw_open[120] == pytest.approx(1.0)
    assert blink_left[30] == pytest.approx(1.0) and blink_left[0] == 0.0
    assert cap.unmatched == []
    assert cap.ignored == ["BlendShapeCount", *LLF_ROTATIONS]
    assert (cap.time_column, cap.timecode_fps, cap.fps_detected) == ("Timecode", 60.0, True)


def test_subframes_are_fractions_of_a_frame() -> None:
    text = "Timecode,BlendShapeCount,JawOpen\n00:00:00:01.500,61,0.1\n00:00:00:02.250,61,0.2\n"
    cap = parse_capture(text, "take.csv")
    assert cap.times == pytest.approx([0.0, 0.75 / 60])


def test_capture_rate_from_the_timecode() -> None:
    # 30 fps frame numbers wrap after 29: detected; without detection the rate given is used
    cap = parse_capture(live_link_csv(seconds=2.0, fps=30), "take.csv", timecode_fps=60.0)
    assert (cap.timecode_fps, cap.fps_detected) == (30.0, True)
    assert cap.duration == pytest.approx(2.0)
    slow = parse_capture(live_link_csv(seconds=2.0, fps=30), "take.csv", timecode_fps=30.0, detect_fps=False)
    assert (slow.timecode_fps, slow.fps_detected) == (30.0, False) and slow.duration == pytest.approx(2.0)
    # a short take that never reaches a new second: the rate given (60)
    short = parse_capture(live_link_csv(seconds=0.2, start=(1, 0, 0, 0)), "take.csv")
    assert (short.timecode_fps, short.fps_detected) == (60.0, False) and short.duration == pytest.approx(0.2)
    # frame numbers up to 59 cannot be 30 fps: said, not misread
    with pytest.raises(CaptureError, match="frame number 59 does not fit a 30 fps"):
        parse_capture(live_link_csv(seconds=2.0), "take.csv", timecode_fps=30.0, detect_fps=False)


def test_recording_past_midnight() -> None:
    cap = parse_capture(live_link_csv(seconds=2.0, start=(23, 59, 59, 0)), "take.csv")
    assert cap.duration == pytest.approx(2.0) and cap.times[60] == pytest.approx(1.0)


def test_unknown_columns_are_reported() -> None:
    cap = parse_capture(live_link_csv(seconds=0.5, extra="MyCustomSmirk"), "take.csv")
    assert cap.unmatched == ["MyCustomSmirk"] and len(cap.curves) == 52


@pytest.mark.parametrize(
    ("column", "stamps", "times"),
    [
        ("time", ["10.0", "10.5", "11.25"], [0.0, 0.5, 1.25]),
        ("timestamp", ["1700000000.0", "1700000000.5", "1700000001.0"], [0.0, 0.5, 1.0]),
        ("time_ms", ["0", "500", "1250"], [0.0, 0.5, 1.25]),
        ("frame", ["0", "30", "60"], [0.0, 0.5, 1.0]),  # at the capture rate, 60
        ("Timecode", ["0.0", "0.5", "1.0"], [0.0, 0.5, 1.0]),  # a Timecode column in seconds
    ],
)
def test_plain_arkit_csv(column: str, stamps: list[str], times: list[float]) -> None:
    rows = [f"{column},jawOpen,eye_blink_left,blendShapes.mouthSmileLeft"]
    rows += [f"{s},{0.1 * i},{0.2 * i},0.3" for i, s in enumerate(stamps)]
    cap = parse_capture("\n".join(rows), "arkit.csv")
    assert cap.times == pytest.approx(times)
    assert sorted(cap.curves) == ["eyeBlinkLeft", "jawOpen", "mouthSmileLeft"]
    assert cap.curves["jawOpen"] == pytest.approx([0.0, 0.1, 0.2]) and cap.unmatched == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("PK\x03\x04\x00\x00binary", "is not a CSV file"),
        ("just one line of prose without commas", "is not a CSV with a header row"),
        ("Timecode,Colour,Size\n00:00:00:01.000,red,3\n", "no ARKit blendshape columns"),
        ("Speed,JawOpen\n1,0.5\n", "no time column"),
        ("Timecode,BlendShapeCount,JawOpen\n", "no rows of values"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:01.000,61,0.1\n00:00:00:02.000,61,abc\n",
         "line 3, column JawOpen: 'abc' is not a number"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:01.000,61,nan\n", "'nan' is not a number"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:01.000,61,\n", "the value is empty"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:02.000,61,0.1\n00:00:00:01.000,61,0.2\n",
         "line 3: time 00:00:00:01.000 is not after the row before"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:02.000,61,0.1\n00:00:00:02.000,61,0.2\n",
         "is not after the row before"),
        ("time,jawOpen\n0.5,0.1\n0.25,0.2\n", "line 3: time 0.25 is not after"),
        ("Timecode,BlendShapeCount,JawOpen\n00:00:00:01.000,61\n", "line 2 has 2 fields, the header 3"),
        ("Timecode,BlendShapeCount,JawOpen\n12:00:00:01.000,61,0.1\nnoon,61,0.2\n", "'noon' is not HH:MM:SS:FF"),
    ],
)
def test_bad_files_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message) as caught:
        parse_capture(text, "take.csv")
    assert "\n" not in str(caught.value) and str(caught.value).startswith(("take.csv", "capture rate"))


def test_read_capture_files(tmp_path: Path) -> None:
    good = tmp_path / "take.csv"
    good.write_text("\ufeff" + live_link_csv(seconds=1.0), encoding="utf-8")  # with a BOM
    assert read_capture(good).duration == pytest.approx(1.0)
    image = tmp_path / "photo.csv"
    image.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CaptureError, match="photo.csv is not a CSV file"):
        read_capture(image)
    with pytest.raises(CaptureError, match="cannot read .*missing.csv"):
        read_capture(tmp_path / "missing.csv")


def test_resample_is_linear_and_held_at_the_ends() -> None:
    times, values = [0.0, 1.0, 3.0], [0.0, 1.0, 0.0]
    assert resample(times, values, [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0]) == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0])


def test_name_matching() -> None:
    assert arkit_csv.arkit_name("EyeBlinkLeft") == "eyeBlinkLeft"
    assert arkit_csv.arkit_name("JAWOPEN") == "jawOpen"
    assert arkit_csv.arkit_name("HeadYaw") is None and arkit_csv.arkit_name("Timecode") is None
    assert len(ARKIT_NAMES) == len(set(ARKIT_NAMES)) == 52
