"""Face captures as CSV: Live Link Face recordings and ARKit blendshape exports, read into capture
times and one curve per ARKit expression (issue 18).

Standard library only (no bpy, no numpy), so the parser is tested without Blender and the add-on
module that keys the shape keys (``animation_ops``) stays small.

Live Link Face (Epic's iPhone app) writes one row per captured frame::

    Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,...,TongueOut,HeadYaw,HeadPitch,...
    14:03:52:28.207,61,0.0123,0.0,...

The Timecode is SMPTE ``HH:MM:SS:FF`` at the recording's frame rate (commonly 60 fps, not written
in the file) with a fractional frame after the dot (Unreal's sub-frame); names are ARKit's in
UpperCamelCase. Plain ARKit CSVs of the same form, with lowerCamelCase names and a time column in
seconds (``time``, ``timestamp``), milliseconds (``time_ms``) or frames (``frame``), read too.
Head and eye rotations (HeadYaw, LeftEyePitch, ...) are read past: the head's origin is not its
neck pivot, and turning the head would break its match to the fitted camera.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ARKIT_NAMES",
    "Capture",
    "CaptureError",
    "TIMECODE_RATES",
    "arkit_name",
    "parse_capture",
    "read_capture",
    "resample",
]

log = logging.getLogger(__name__)

#: The 52 ARKit blendshape names, as the engine names the head's expression shape keys.
ARKIT_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft",
    "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip

#: Timecode frame rates a recording may use, for telling the rate from the frame numbers.
TIMECODE_RATES: tuple[int, ...] = (24, 25, 30, 48, 50, 60, 100, 120)

#: Columns that are known and deliberately not keyed: Live Link Face's count and the head and
#: eye rotations (normalised names, see ``_key``).
_KNOWN_EXTRAS = frozenset(
    {"blendshapecount"}
    | {f"{part}{axis}" for part in ("head", "lefteye", "righteye") for axis in ("yaw", "pitch", "roll")}
)

#: Time columns by normalised name and the kind of time they hold; of those present, the first
#: kind in _TIME_ORDER is used.
_TIME_COLUMNS: dict[str, str] = {
    "timecode": "timecode",
    "time": "seconds", "times": "seconds", "timestamp": "seconds", "seconds": "seconds",
    "sec": "seconds", "t": "seconds", "timesec": "seconds", "timeseconds": "seconds",
    "timems": "ms", "timestampms": "ms", "ms": "ms", "milliseconds": "ms",
    "frame": "frame", "frames": "frame", "frameindex": "frame", "framenumber": "frame",
}  # fmt: skip
_TIME_ORDER = ("timecode", "seconds", "ms", "frame")

_BY_KEY = {re.sub(r"[^a-z0-9]", "", n.lower()): n for n in ARKIT_NAMES}
_TIMECODE = re.compile(r"^\s*(\d+)[:;](\d{1,2})[:;](\d{1,2})[:;](\d+)(?:\.(\d+))?\s*$")
_MAX_BYTES = 256 * 1024 * 1024  # a 60 s capture at 60 fps is about 2 MB, an hour about 130 MB


class CaptureError(ValueError):
    """A file that is not a face capture this reader understands; the message is one line."""


@dataclass(frozen=True)
class Capture:
    """A face capture: times in seconds from its first row, and each matched curve's values."""

    times: list[float]
    curves: dict[str, list[float]]  # ARKit name -> one value per time
    unmatched: list[str] = field(default_factory=list)  # columns that are no ARKit blendshape
    ignored: list[str] = field(default_factory=list)  # known columns not keyed (head/eye rotation)
    time_column: str = ""
    timecode_fps: float | None = None  # the rate the Timecode's frame numbers were read at
    fps_detected: bool = False  # timecode_fps came from the frame numbers, not the caller

    @property
    def duration(self) -> float:
        """Seconds from the first row to the last."""
        return self.times[-1] - self.times[0] if self.times else 0.0


def _key(name: str) -> str:
    """A column name reduced for matching: the part after any 'blendShapes.' prefix, lowercase,
    letters and digits only (so EyeBlinkLeft, eyeBlinkLeft and eye_blink_left all match)."""
    tail = re.split(r"[.:/]", name.strip())[-1]
    return re.sub(r"[^a-z0-9]", "", tail.lower())


def arkit_name(column: str) -> str | None:
    """The ARKit blendshape name a CSV column means, matched case-insensitively; None if none."""
    return _BY_KEY.get(_key(column))


def _number(text: str, line: int, column: str, source: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
        if not text.strip():
            raise CaptureError(f"{source} line {line}, column {column}: the value is empty; "
                               "every row needs a number in every blendshape column") from None
    if not math.isfinite(value):
        raise CaptureError(f"{source} line {line}, column {column}: {text.strip()!r} is not a number; "
                           "the file is damaged or not a face capture")
    return value


def _timecode_rate(parts: list[tuple[int, int, int, int, float]], fps: float, detect: bool,
                   source: str) -> tuple[float, bool]:
    """The Timecode's frame rate: from the frame numbers when ``detect`` and they show it (the
    last frame before a new second, or any frame number at or above ``fps``), else ``fps``."""
    highest = max(p[3] for p in parts)
    before_wrap = [a[3] for a, b in zip(parts, parts[1:]) if a[:3] != b[:3]]
    evidence = max([highest, *before_wrap])
    if detect and (before_wrap or highest >= fps):
        for rate in TIMECODE_RATES:
            if rate > evidence:
                return float(rate), True
        raise CaptureError(f"{source}: Timecode frame numbers reach {highest}, above any capture "
                           f"rate known ({TIMECODE_RATES[-1]} fps); is this a Live Link Face CSV?")
    if highest >= fps:
        raise CaptureError(f"{source}: Timecode frame number {highest} does not fit a {fps:g} fps "
                           f"recording; set the capture rate to the recording's (commonly 60 fps)")
    return fps, False


def _sniff_delimiter(header: str) -> str:
    if "," in header:
        return ","
    return "\t" if "\t" in header else (";" if ";" in header else ",")


def parse_capture(text: str, source: str = "CSV", timecode_fps: float = 60.0,
                  detect_fps: bool = True) -> Capture:
    """Parse a capture from CSV text; ``source`` names it in errors. ``timecode_fps`` is the rate
    of a Timecode column's frame numbers (also of a frame column); with ``detect_fps`` a Timecode
    that shows its rate (frame numbers wrapping to a new second) overrides it."""
    if timecode_fps <= 0 or not math.isfinite(timecode_fps):
        raise CaptureError(f"capture rate {timecode_fps} fps: choose a positive frame rate such as 60")
    if "\x00" in text:
        raise CaptureError(f"{source} is not a CSV file (it holds binary data); choose a Live Link Face .csv")
    lines = text.lstrip("\ufeff").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise CaptureError(f"{source} is empty; choose a Live Link Face or ARKit blendshape CSV")
    delimiter = _sniff_delimiter(lines[0])
    try:
        rows = [r for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)]
    except csv.Error as exc:
        raise CaptureError(f"{source} is not a readable CSV ({exc})") from None
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise CaptureError(f"{source} is not a CSV with a header row of column names; "
                           "choose a Live Link Face or ARKit blendshape CSV")

    time_index: int | None = None
    time_kind = ""
    for kind in _TIME_ORDER:
        found = [i for i, h in enumerate(header) if _TIME_COLUMNS.get(_key(h)) == kind]
        if found:
            time_index, time_kind = found[0], kind
            break
    matched: dict[int, str] = {}
    unmatched: list[str] = []
    ignored: list[str] = []
    for i, name in enumerate(header):
        if i == time_index:
            continue
        arkit = arkit_name(name)
        if arkit is not None and arkit not in matched.values():
            matched[i] = arkit
        elif _key(name) in _KNOWN_EXTRAS or _key(name) in _TIME_COLUMNS:
            ignored.append(name)
        else:
            unmatched.append(name)
    if not matched:
        raise CaptureError(f"{source} has no ARKit blendshape columns (such as EyeBlinkLeft or jawOpen); "
                           "choose a Live Link Face or ARKit blendshape CSV")
    if time_index is None:
        raise CaptureError(f"{source} has no time column (Timecode, time, time_ms or frame); "
                           "choose a Live Link Face or ARKit blendshape CSV")

    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    if not body:
        raise CaptureError(f"{source} has a header but no rows of values")
    curves: dict[str, list[float]] = {name: [] for name in matched.values()}
    stamps: list[str] = []
    for line, row in body:
        if len(row) < len(header) or any(c.strip() for c in row[len(header):]):
            raise CaptureError(f"{source} line {line} has {len(row)} fields, the header {len(header)}; "
                               "the file is cut short or damaged")
        stamps.append(row[time_index].strip())
        for i, name in matched.items():
            curves[name].append(_number(row[i], line, header[i], source))

    rate: float | None = None
    detected = False
    if time_kind == "timecode" and any(":" in s or ";" in s for s in stamps):
        parts = []
        for (line, _), stamp in zip(body, stamps):
            m = _TIMECODE.match(stamp)
            if m is None:
                raise CaptureError(f"{source} line {line}: Timecode {stamp!r} is not HH:MM:SS:FF; "
                                   "the file is damaged or not a Live Link Face CSV")
            h, mi, s, f = (int(g) for g in m.group(1, 2, 3, 4))
            parts.append((h, mi, s, f, float(f"0.{m.group(5)}") if m.group(5) else 0.0))
        rate, detected = _timecode_rate(parts, timecode_fps, detect_fps, source)
        absolute = [h * 3600 + mi * 60 + s + (f + sub) / rate for h, mi, s, f, sub in parts]
        for i in range(1, len(absolute)):  # a recording running past midnight
            if absolute[i] < absolute[i - 1] - 12 * 3600:
                absolute[i:] = [t + 24 * 3600 for t in absolute[i:]]
    else:
        column = header[time_index]
        values = [_number(s, line, column, source) for (line, _), s in zip(body, stamps)]
        if time_kind == "frame":
            rate = timecode_fps
        scale = {"seconds": 1.0, "timecode": 1.0, "ms": 1e-3, "frame": 1.0 / timecode_fps}[time_kind]
        absolute = [v * scale for v in values]
    for i in range(1, len(absolute)):
        if absolute[i] <= absolute[i - 1]:
            raise CaptureError(f"{source} line {body[i][0]}: time {stamps[i]} is not after the row before "
                               f"({stamps[i - 1]}); the rows must be in time order, one per moment")
    times = [t - absolute[0] for t in absolute]
    log.info("%s: %d rows over %.2f s, %d curves, unmatched columns %s", source, len(times),
             times[-1], len(curves), unmatched)
    return Capture(times=times, curves=curves, unmatched=unmatched, ignored=ignored,
                   time_column=header[time_index], timecode_fps=rate, fps_detected=detected)


def read_capture(path: Path | str, timecode_fps: float = 60.0, detect_fps: bool = True) -> Capture:
    """Read a capture CSV file (see ``parse_capture``); errors are one-line ``CaptureError``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise CaptureError(f"{path.name} is {size / 2**20:.0f} MiB, too large for a face capture CSV")
        data = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"cannot read {path}: {exc.strerror or exc}; choose a readable .csv file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CaptureError(f"{path.name} is not a CSV file (not text); choose a Live Link Face .csv") from None
    return parse_capture(text, path.name, timecode_fps, detect_fps)


def resample(times: list[float], values: list[float], at: list[float]) -> list[float]:
    """``values`` (at increasing ``times``) linearly interpolated at the times ``at``, held at the
    first and last value outside the capture."""
    out: list[float] = []
    j = 0
    for t in at:
        while j + 1 < len(times) and times[j + 1] <= t:
            j += 1
        if t <= times[0]:
            out.append(values[0])
        elif j + 1 >= len(times):
            out.append(values[-1])
        else:
            w = (t - times[j]) / (times[j + 1] - times[j])
            out.append(values[j] + w * (values[j + 1] - values[j]))
    return out
