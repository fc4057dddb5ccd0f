"""The result folder: the one format the engine writes and the CLI, the add-on and exports read.

The specification, with every file and field, is ``docs/result-format.md``; this module is its
only implementation, so the writer and every reader agree by construction. It needs numpy, and
Pillow only to read the PNG files (imported when a PNG is read), so a reader with numpy
alone (say Blender's bundled Python) can use ``read_result(path, load_images=False)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ganfit import __version__ as ENGINE_VERSION
from ganfit.errors import GanfitError, ModelDataError, OutputError
from ganfit.io.result_schema import (  # the format, defined once with the add-on (build.py vendors it)
    GLB_FILE,
    MAX_JSON_BYTES,
    MAX_PNG_PIXELS,
    MESH_NPZ,
    MTL_FILE,
    NPZ_ARRAYS,
    OBJ_FILE,
    PREVIEW_PNG,
    RESULT_FORMAT,
    RESULT_JSON,
    RESULT_VERSION,
    TEXTURE_PNG,
)
from ganfit.models.limits import check_npz
from ganfit.io.atomic import (
    OS_LITTER,
    atomic_directory,
    check_can_create,
    clean_leftovers,
    normalise_target,
    write_npz,
)

__all__ = [
    "RESULT_FORMAT",
    "RESULT_VERSION",
    "RESULT_JSON",
    "MESH_NPZ",
    "TEXTURE_PNG",
    "PREVIEW_PNG",
    "OBJ_FILE",
    "MTL_FILE",
    "GLB_FILE",
    "ResultFileError",
    "CameraParams",
    "LightParams",
    "Reconstruction",
    "write_result",
    "read_result",
    "result_files",
    "is_result_folder",
    "check_output_folder",
    "encode_png",
    "write_png",
    "read_png",
]

log = logging.getLogger(__name__)

#: Arrays stored in head.npz: name -> (numpy dtype, shape with letters for sizes that agree).
_NPZ_ARRAYS: dict[str, tuple[np.dtype, tuple[int | str, ...]]] = {
    name: (np.dtype(dtype), shape) for name, (dtype, shape) in NPZ_ARRAYS.items()
}

#: head.npz arrays stored uncompressed: float coordinates whose low bits are noise deflate by
#: 8-19% only (vertices 54 -> 50 KB), and deflating them took 3 of fast mode's 200 ms.
_NPZ_STORED = ("vertices", "neutral_vertices", "uvs")

#: head.npz arrays every result of one model repeats: their deflated bytes are reused.
_NPZ_REUSED = ("expression_deltas", "faces", "uv_faces")

#: Fitted vertices must equal neutral + sum_e w_e delta_e to this many metres (0.1 mm).
_EXPRESSION_TOLERANCE_M = 1e-4


class ResultFileError(GanfitError):
    """A result folder is missing, incomplete, damaged, or from an incompatible ganfit."""


def _vec3(value: Any, name: str) -> np.ndarray:
    array = np.array(value, dtype=np.float64).reshape(-1)
    if array.shape != (3,):
        raise ValueError(f"{name}: expected 3 numbers, got shape {np.shape(value)}")
    return array


@dataclass(frozen=True, eq=False)
class CameraParams:
    """Pinhole camera (paper 3.2), in model space; principal point at the image centre.

    ``focal`` is the focal length divided by the image width, so it does not depend on the
    resolution; ``width``/``height`` are the photo's size in pixels the camera was fitted for.
    """

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    focal: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("position", "look_at", "up"):
            object.__setattr__(self, name, _vec3(getattr(self, name), f"camera.{name}"))
        object.__setattr__(self, "focal", float(self.focal))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def yfov(self) -> float:
        """Vertical field of view in radians (what glTF and Blender's sensor-fit logic want)."""
        return 2.0 * math.atan(self.height / (2.0 * self.focal * self.width))

    def validate(self) -> None:
        """Raise ValueError if the camera cannot form an image."""
        if not (math.isfinite(self.focal) and self.focal > 0):
            raise ValueError(f"camera.focal must be a positive number, got {self.focal}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        for name in ("position", "look_at", "up"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"camera.{name} must be finite")
        forward = self.look_at - self.position
        if np.linalg.norm(forward) == 0:
            raise ValueError("camera.look_at equals camera.position")
        if np.linalg.norm(np.cross(forward, self.up)) == 0:
            raise ValueError("camera.up is parallel to the viewing direction")

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position.tolist(),
            "look_at": self.look_at.tolist(),
            "up": self.up.tolist(),
            "focal": self.focal,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CameraParams:
        return cls(
            position=data["position"],
            look_at=data["look_at"],
            up=data["up"],
            focal=data["focal"],
            width=data["width"],
            height=data["height"],
        )


@dataclass(frozen=True, eq=False)
class LightParams:
    """One point light (model space position, linear RGB colour) plus ambient RGB; no falloff."""

    position: np.ndarray
    colour: np.ndarray
    ambient: np.ndarray

    def __post_init__(self) -> None:
        for name in ("position", "colour", "ambient"):
            object.__setattr__(self, name, _vec3(getattr(self, name), f"light.{name}"))

    def validate(self) -> None:
        for name in ("position", "colour", "ambient"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"light.{name} must be finite")

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position.tolist(),
            "colour": self.colour.tolist(),
            "ambient": self.ambient.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LightParams:
        return cls(position=data["position"], colour=data["colour"], ambient=data["ambient"])


def _as(value: Any, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(value, dtype=dtype))


@dataclass(frozen=True, eq=False, kw_only=True)
class Reconstruction:
    """Everything one reconstruction produced; what a result folder holds.

    Arrays are converted to the documented dtypes on construction, so callers may pass float64
    or torch-converted arrays. ``vertices == neutral_vertices + sum_e w_e * expression_deltas[e]``
    (checked by ``validate``): the add-on rebuilds the fitted face from sliders with it.
    """

    photos: list[str]
    vertices: np.ndarray  # (V, 3) float32, model space: metres, y up, face toward +z
    neutral_vertices: np.ndarray  # (V, 3) float32, identity only (expression zero)
    faces: np.ndarray  # (F, 3) int32 into vertices, counter-clockwise seen from outside
    uvs: np.ndarray  # (T, 2) float32, v up
    uv_faces: np.ndarray  # (F, 3) int32 into uvs
    expression_names: list[str]
    expression_weights: np.ndarray  # (E,) float32
    expression_deltas: np.ndarray  # (E, V, 3) float32
    identity_names: list[str]
    identity_coefficients: np.ndarray  # (Ki,) float32
    landmark_indices: np.ndarray  # (L,) int32 vertex indices, L = 68 for the iBUG scheme
    landmarks_2d: np.ndarray  # (L, 2) float32, detected, photo pixels (x right, y down)
    landmark_error_iod: float  # mean landmark error / outer-eye-corner distance
    camera: CameraParams
    light: LightParams
    texture: np.ndarray  # (Ht, Wt, 3) uint8 UV texture, row 0 is v = 1
    preview: np.ndarray | None = None  # (H, W, 3) uint8 render over the photo
    shape_model: str = ""
    texture_model: str = ""
    engine_version: str = ENGINE_VERSION
    losses: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str | None = None  # ISO 8601 UTC; write_result stamps it when None
    # Several photos of one person (paper 3.5): per photo its camera, light, expression weights,
    # landmark error (JSON-ready dicts). Empty for one photo, whose view is the top level.
    views: list[dict[str, Any]] = field(default_factory=list)
    # (Ht, Wt) float32 in [0, 1]: how much of each texel comes from the photo, where the texture
    # blends the photo with the texture model (``--texture-source blend``). In memory only (the
    # benchmarks measure the seam on it); a result folder does not hold it.
    texture_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        conversions = {
            "vertices": np.float32,
            "neutral_vertices": np.float32,
            "faces": np.int32,
            "uvs": np.float32,
            "uv_faces": np.int32,
            "expression_weights": np.float32,
            "expression_deltas": np.float32,
            "identity_coefficients": np.float32,
            "landmark_indices": np.int32,
            "landmarks_2d": np.float32,
            "texture": np.uint8,
        }
        for name, dtype in conversions.items():
            object.__setattr__(self, name, _as(getattr(self, name), dtype))
        if self.preview is not None:
            object.__setattr__(self, "preview", _as(self.preview, np.uint8))
        object.__setattr__(self, "photos", [str(p) for p in self.photos])
        object.__setattr__(self, "expression_names", [str(n) for n in self.expression_names])
        object.__setattr__(self, "identity_names", [str(n) for n in self.identity_names])
        object.__setattr__(self, "landmark_error_iod", float(self.landmark_error_iod))
        object.__setattr__(
            self, "losses", {str(k): [float(x) for x in v] for k, v in self.losses.items()}
        )

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def validate(self, *, require_images: bool = True) -> None:
        """Raise ValueError naming the first inconsistency; writers call this before writing."""
        sizes: dict[str, int] = {}
        for name, (_dtype, shape) in _NPZ_ARRAYS.items():
            array = getattr(self, name)
            if array.ndim != len(shape):
                raise ValueError(
                    f"{name}: expected {len(shape)} dimensions, got shape {array.shape}"
                )
            for axis, want in zip(array.shape, shape, strict=True):
                if isinstance(want, int):
                    if axis != want:
                        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
                elif want is not None:
                    if sizes.setdefault(want, axis) != axis:
                        raise ValueError(
                            f"{name}: size {axis} disagrees with {want} = {sizes[want]} "
                            f"(shape {array.shape})"
                        )
        n_vert, n_uv = sizes["V"], sizes["T"]
        if n_vert == 0 or sizes["F"] == 0:
            raise ValueError("the mesh has no vertices or no faces")
        for name in ("vertices", "neutral_vertices", "uvs", "expression_deltas", "landmarks_2d"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name}: contains NaN or infinity")
        for name, count in (("faces", n_vert), ("uv_faces", n_uv), ("landmark_indices", n_vert)):
            array = getattr(self, name)
            if array.size and (array.min() < 0 or array.max() >= count):
                raise ValueError(
                    f"{name}: indices must lie in [0, {count}), got [{array.min()}, {array.max()}]"
                )
        n_expr = sizes["E"]
        if len(self.expression_names) != n_expr or self.expression_weights.shape != (n_expr,):
            raise ValueError(
                f"expressions: {len(self.expression_names)} names, weights of shape "
                f"{self.expression_weights.shape}, {n_expr} deltas; they must agree"
            )
        if (
            len(self.identity_names) != self.identity_coefficients.shape[0]
            or self.identity_coefficients.ndim != 1
        ):
            raise ValueError(
                f"identity: {len(self.identity_names)} names but coefficients of shape "
                f"{self.identity_coefficients.shape}"
            )
        for kind, names in (
            ("expression", self.expression_names),
            ("identity", self.identity_names),
        ):
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"{kind} names must be unique; repeated: {dupes[:5]}")
        for name in ("expression_weights", "identity_coefficients"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name}: contains NaN or infinity")
        rebuilt = self.neutral_vertices + np.einsum(
            "e,evc->vc", self.expression_weights, self.expression_deltas
        )
        gap = float(np.abs(rebuilt - self.vertices).max())
        if gap > _EXPRESSION_TOLERANCE_M:
            raise ValueError(
                "vertices differ from neutral_vertices + weighted expression_deltas by "
                f"{gap:.3g} m "
                f"(tolerance {_EXPRESSION_TOLERANCE_M} m)"
            )
        self.camera.validate()
        self.light.validate()
        images = [("texture", self.texture)] + (
            [("preview", self.preview)] if self.preview is not None else []
        )
        for name, image in images:
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"{name}: expected an (H, W, 3) RGB image, got shape {image.shape}"
                )
            if require_images and (image.shape[0] == 0 or image.shape[1] == 0):
                raise ValueError(f"{name}: the image is empty")
        try:
            json.dumps(self.settings, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"settings must be JSON-serialisable (plain numbers, strings, lists, dicts): {exc}"
            ) from exc


# --- PNG ------------------------------------------------------------------------------------


#: zlib level of the PNGs a result holds. 1 rather than Pillow's 6: a 512 px texture encodes in
#: 0.04 s instead of 0.11 s for 172 KB instead of 137 KB (measured), and fast mode's whole
#: reconstruction is meant to take 0.2 s.
PNG_COMPRESS_LEVEL = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB image (glTF embeds these).

    Written here rather than by Pillow: every row takes PNG's "up" filter (its difference from
    the row above, one numpy subtraction), where Pillow tries all five filters on every row.
    A 512 px texture encodes in 5 ms instead of 11 for 4% more bytes (measured); the pixels
    read back are the same, and any PNG reader reads it (Pillow, Blender)."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = _PNG_FILTER_UP
    filtered[:1, 1:] = rows[:1]  # the row above the first counts as zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    return b"".join([
        _PNG_SIGNATURE,
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", zlib.compress(filtered.data, PNG_COMPRESS_LEVEL)),
        _png_chunk(b"IEND", b""),
    ])


def write_png(image: np.ndarray, path: Path) -> bytes:
    """Write an (H, W, 3) uint8 RGB image as PNG (the one PNG writer, so tests can fail it);
    returns the bytes written."""
    data = encode_png(image)
    Path(path).write_bytes(data)
    return data


def read_png(path: Path) -> np.ndarray:
    """Read a PNG as (H, W, 3) uint8 RGB; other modes (an artist's RGBA edit) are converted.

    A file Pillow cannot decode (empty, truncated, not an image) or one declaring more than
    ``MAX_PNG_PIXELS`` is a ``ResultFileError``, never a raw Pillow exception.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():  # the size is checked below, with a better message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            pixels = image.width * image.height
            if pixels > MAX_PNG_PIXELS:
                raise ResultFileError(
                    f"{path}: damaged ({image.width}x{image.height} pixels, more than the "
                    f"{MAX_PNG_PIXELS:,} a result image may have); reconstruct again"
                )
            if image.mode != "RGB":
                log.debug("%s: converting %s to RGB", path, image.mode)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except ResultFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError,
        # DecompressionBombError, zlib errors, ... for a bad file: all mean "damaged"
        raise ResultFileError(
            f"{path}: damaged (not a readable PNG: {type(exc).__name__}: {exc}); "
            "reconstruct again"
        ) from exc


# --- JSON helpers ---------------------------------------------------------------------------


def _json_float(value: float) -> float | None:
    """JSON has no NaN/infinity; store them as null (read back as NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _f32(value: Any) -> float:
    """The shortest decimal that reads back as the same float32 (0.3, not 0.30000001192092896)."""
    return float(str(np.float32(value)))


_NUMBER_LIST = re.compile(r"\[\s+((?:-?[0-9.eE+-]+|null)(?:,\s+(?:-?[0-9.eE+-]+|null))*)\s+\]")

_NAMED_VALUE = re.compile(
    r'\{\n\s+("name": "(?:[^"\\\n]|\\.)*",)\n\s+("(?:weight|coefficient)": [^\n]+)\n\s+\}'
)


def _dumps(document: dict[str, Any]) -> str:
    """Indented JSON with number lists and name/value pairs on one line, so people can read it."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    text = _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text
    )
    return _NAMED_VALUE.sub(lambda m: "{" + m.group(1) + " " + m.group(2) + "}", text)


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _to_document(result: Reconstruction, files: dict[str, str], created: str) -> dict[str, Any]:
    """The result.json document for ``result`` (the field list is docs/result-format.md)."""
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "created": created,
        "engine_version": result.engine_version,
        "coordinates": {"units": "metres", "up": "+y", "face": "+z", "uv_v": "up"},
        "photos": list(result.photos),
        "shape_model": result.shape_model,
        "texture_model": result.texture_model,
        "counts": {
            "vertices": int(result.vertices.shape[0]),
            "faces": int(result.faces.shape[0]),
            "uvs": int(result.uvs.shape[0]),
            "expressions": len(result.expression_names),
            "identity": len(result.identity_names),
            "landmarks": int(result.landmark_indices.shape[0]),
        },
        "camera": result.camera.to_json(),
        "light": result.light.to_json(),
        "expressions": [
            {"name": name, "weight": _f32(weight)}
            for name, weight in zip(result.expression_names, result.expression_weights, strict=True)
        ],
        "identity": [
            {"name": name, "coefficient": _f32(value)}
            for name, value in zip(result.identity_names, result.identity_coefficients, strict=True)
        ],
        "landmarks": {"error_iod": _json_float(result.landmark_error_iod)},
        "texture": {"width": int(result.texture.shape[1]), "height": int(result.texture.shape[0])},
        "settings": result.settings,
        "losses": {name: [_json_float(x) for x in curve] for name, curve in result.losses.items()},
        **({"views": result.views} if result.views else {}),
        "files": files,
    }


# --- writing --------------------------------------------------------------------------------


def _read_json(json_path: Path) -> Any:
    """Parse result.json, bounded in size; any failure is a one-line ``ResultFileError``."""
    try:
        with open(json_path, "rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise ResultFileError(
            f"{json_path}: cannot be read ({exc.strerror or exc}); check the file's permissions"
        ) from exc
    if len(data) > MAX_JSON_BYTES:
        raise ResultFileError(
            f"{json_path}: too large (over {MAX_JSON_BYTES // 2**20} MB) to be a ganfit result; "
            "choose the folder ganfit wrote"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise ResultFileError(f"{json_path}: damaged (nested too deeply); reconstruct again") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, too many digits
        raise ResultFileError(f"{json_path}: damaged ({exc}); reconstruct again") from exc


def _result_document(path: Path) -> dict[str, Any] | None:
    """result.json of a ganfit result folder at ``path``, or None if it is not one."""
    json_path = path / RESULT_JSON
    if not (path.is_dir() and json_path.is_file()):
        return None
    try:
        document = _read_json(json_path)
    except ResultFileError:
        return None
    if not isinstance(document, dict) or document.get("format") != RESULT_FORMAT:
        return None
    return document


def is_result_folder(path: Path | str) -> bool:
    """True if ``path`` is a folder whose result.json says it is a ganfit result (its
    ``format``), not merely a folder holding some file of that name."""
    return _result_document(Path(path)) is not None


def _check_replaceable(path: Path) -> None:
    """Raise ``OutputError`` unless ``--force`` may delete ``path``: an empty folder, or a ganfit
    result holding only what ganfit wrote (result.json and its ``files``), so nothing the user
    keeps there (their notes, a .blend) vanishes with it."""
    if not path.is_dir():
        return  # a file is refused by check_can_create
    try:
        entries = sorted(set(os.listdir(path)) - OS_LITTER)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot be listed ({exc.strerror or exc}); choose another output folder"
        ) from exc
    if not entries:
        return
    document = _result_document(path)
    if document is None:
        raise OutputError(
            f"{path}: exists and is not a ganfit result folder, so --force will not replace it; "
            "choose another output folder"
        )
    listed = document.get("files")
    written = {RESULT_JSON} | {
        name for name in (listed.values() if isinstance(listed, dict) else ()) if isinstance(name, str)
    }
    foreign = [name for name in entries if name not in written]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{path}: holds files ganfit did not write ({shown}); move them out or choose "
            "another output folder"
        )


def check_output_folder(out_dir: Path | str, force: bool = False) -> None:
    """Fail fast, before minutes of fitting, if ``write_result`` would refuse ``out_dir``.

    Also cleans up after a run that was killed while writing here (as the write would), so the
    answer is the one the write will give. Creates nothing.
    """
    clean_leftovers(out_dir, "folder")
    check_can_create(out_dir, force, "folder")
    out_dir = normalise_target(out_dir)
    if force and out_dir.exists():
        _check_replaceable(out_dir)


def write_result(
    result: Reconstruction, out_dir: Path | str, force: bool = False, exports: bool = True
) -> Path:
    """Write ``result`` as a result folder at ``out_dir``, atomically; return ``out_dir``.

    Nothing appears at ``out_dir`` until every file is complete and flushed; a failure or
    Ctrl-C leaves no trace (with ``force``, the old folder survives intact), and what a killed
    earlier write left here is cleaned up first. ``force`` replaces only an empty folder or a
    ganfit result holding nothing but the files it lists. ``exports`` also writes head.obj/.mtl
    and head.glb, which reuse texture.png / embed it.
    """
    out_dir = Path(out_dir)
    try:
        result.validate()
    except ValueError as exc:
        raise ValueError(f"cannot write an inconsistent reconstruction: {exc}") from exc
    created = result.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    with atomic_directory(out_dir, force=force, replaceable=_check_replaceable) as tmp:
        files: dict[str, str] = {"mesh": MESH_NPZ, "texture": TEXTURE_PNG}
        # zlib level 1: 0.04 s instead of 0.09 s for the expression basis, 208 KB instead of 154 KB;
        # the basis and the triangles are the same in every result of a model, so their deflated
        # bytes are reused (write_npz compares the bytes): 15 -> 5 ms.
        write_npz(tmp / MESH_NPZ, {name: getattr(result, name) for name in _NPZ_ARRAYS}, level=1,
                  stored=_NPZ_STORED, reuse=_NPZ_REUSED)
        texture_png = write_png(result.texture, tmp / TEXTURE_PNG)
        if result.preview is not None:
            write_png(result.preview, tmp / PREVIEW_PNG)
            files["preview"] = PREVIEW_PNG
        if exports:
            from ganfit.io.export_gltf import export_glb
            from ganfit.io.export_obj import export_obj

            export_obj(result, tmp / OBJ_FILE, texture_name=TEXTURE_PNG, write_texture=False)
            export_glb(result, tmp / GLB_FILE, texture_png=texture_png)
            files.update({"obj": OBJ_FILE, "mtl": MTL_FILE, "glb": GLB_FILE})
        document = _to_document(result, files, created)
        text = _dumps(document)
        # result.json last: a folder with it is complete even if copied by a non-atomic tool
        (tmp / RESULT_JSON).write_text(text + "\n", encoding="utf-8")
    log.info(
        "wrote result %s (%d vertices, %d expressions)",
        out_dir,
        result.num_vertices,
        len(result.expression_names),
    )
    return out_dir


# --- reading --------------------------------------------------------------------------------


def _locate(path: Path | str) -> Path:
    """Accept the folder or its result.json (what a file browser hands over)."""
    path = Path(path)
    if path.name == RESULT_JSON and path.is_file():
        return path.parent
    if not path.exists():
        raise ResultFileError(f"{path}: no such result folder; check the path")
    if not path.is_dir():
        raise ResultFileError(
            f"{path}: not a result folder (expected a folder holding {RESULT_JSON})"
        )
    return path


def _load_document(folder: Path) -> dict[str, Any]:
    json_path = folder / RESULT_JSON
    if not json_path.is_file():
        raise ResultFileError(f"{folder}: not a ganfit result folder ({RESULT_JSON} is missing)")
    document = _read_json(json_path)
    if not isinstance(document, dict) or document.get("format") != RESULT_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ResultFileError(
            f"{json_path}: not a ganfit result (format {found!r}, expected {RESULT_FORMAT!r})"
        )
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultFileError(
            f"{json_path}: damaged (format version {version!r} is not a positive integer)"
        )
    if version > RESULT_VERSION:
        raise ResultFileError(
            f"{folder}: written by a newer ganfit (result format version {version}, this ganfit "
            f"{ENGINE_VERSION} reads up to {RESULT_VERSION}); upgrade ganfit"
        )
    return document


def result_files(path: Path | str) -> dict[str, Path]:
    """Paths of the files a result folder lists (mesh, texture, maybe preview, obj, mtl, glb).

    The add-on uses this to hand texture.png straight to Blender's image loader.
    """
    folder = _locate(path)
    document = _load_document(folder)
    return _files(folder, document)


def _files(folder: Path, document: dict[str, Any]) -> dict[str, Path]:
    listed = document.get("files")
    if not isinstance(listed, dict):
        raise ResultFileError(f"{folder / RESULT_JSON}: damaged (no 'files' map)")
    paths: dict[str, Path] = {}
    for key, name in listed.items():
        # plain names only: a result.json must not point outside its folder
        if (
            not isinstance(name, str)
            or not name
            or name != os.path.basename(name)
            or name in (".", "..")
        ):
            raise ResultFileError(
                f"{folder / RESULT_JSON}: damaged (files.{key} = {name!r} is not a file name)"
            )
        paths[key] = folder / name
    for key in ("mesh", "texture"):
        if key not in paths:
            raise ResultFileError(f"{folder / RESULT_JSON}: damaged (files.{key} is missing)")
    return paths


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise ResultFileError(
            f"{path}: missing; the result folder is incomplete, reconstruct again"
        )
    return path


def read_result(path: Path | str, *, load_images: bool = True) -> Reconstruction:
    """Read and validate a result folder (or its result.json) written by ``write_result``.

    ``load_images=False`` skips the PNGs (no Pillow needed): texture is then a (0, 0, 3) array
    and preview None; use ``result_files`` for their paths.
    """
    folder = _locate(path)
    document = _load_document(folder)
    paths = _files(folder, document)
    json_path = folder / RESULT_JSON
    try:
        # Declared array sizes first: a tiny head.npz declaring a huge array allocated it.
        check_npz(_require_file(paths["mesh"]), "Result mesh", "reconstruct again")
    except ModelDataError as exc:
        raise ResultFileError(f"{paths['mesh']}: damaged ({exc})") from None
    try:
        with np.load(_require_file(paths["mesh"]), allow_pickle=False) as npz:
            missing = [name for name in _NPZ_ARRAYS if name not in npz.files]
            if missing:
                raise ResultFileError(
                    f"{paths['mesh']}: damaged (arrays missing: {', '.join(missing)}); "
                    "reconstruct again"
                )
            arrays = {name: npz[name] for name in _NPZ_ARRAYS}
    except ResultFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, pickled objects, bad deflate data
        # (zlib.error), encrypted members, absurd shapes: numpy and zipfile raise many kinds
        raise ResultFileError(f"{paths['mesh']}: damaged ({exc}); reconstruct again") from exc
    for name, (dtype, _shape) in _NPZ_ARRAYS.items():
        if arrays[name].dtype != dtype:
            raise ResultFileError(
                f"{paths['mesh']}: damaged ({name} has dtype {arrays[name].dtype}, "
                f"expected {np.dtype(dtype)})"
            )

    if load_images:
        texture = read_png(_require_file(paths["texture"]))
        preview = read_png(_require_file(paths["preview"])) if "preview" in paths else None
    else:
        texture, preview = np.zeros((0, 0, 3), np.uint8), None

    # a number beyond float32 (1e308) becomes inf, refused by validate below: no warning
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            expressions = document["expressions"]
            identity = document["identity"]
            result = Reconstruction(
                photos=document["photos"],
                **arrays,
                expression_names=[item["name"] for item in expressions],
                expression_weights=np.array([item["weight"] for item in expressions], np.float32),
                identity_names=[item["name"] for item in identity],
                identity_coefficients=np.array([item["coefficient"] for item in identity], np.float32),
                landmark_error_iod=_float_or_nan(document["landmarks"]["error_iod"]),
                camera=CameraParams.from_json(document["camera"]),
                light=LightParams.from_json(document["light"]),
                texture=texture,
                preview=preview,
                shape_model=document.get("shape_model", ""),
                texture_model=document.get("texture_model", ""),
                engine_version=document.get("engine_version", ""),
                losses={
                    k: [_float_or_nan(x) for x in v] for k, v in document.get("losses", {}).items()
                },
                settings=document.get("settings", {}),
                created=document.get("created"),
                views=list(document.get("views", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            raise ResultFileError(
                f"{json_path}: damaged (bad or missing field: {exc}); reconstruct again"
            ) from exc
    try:
        result.validate(require_images=load_images)
    except ValueError as exc:
        raise ResultFileError(f"{folder}: damaged ({exc}); reconstruct again") from exc
    counts = document.get("counts", {})
    if not isinstance(counts, dict):
        raise ResultFileError(f"{json_path}: damaged ('counts' is not an object); reconstruct again")
    actual = {
        "vertices": result.num_vertices,
        "faces": int(result.faces.shape[0]),
        "expressions": len(result.expression_names),
    }
    for key, value in actual.items():
        if key in counts and counts[key] != value:
            raise ResultFileError(
                f"{folder}: damaged ({RESULT_JSON} says {counts[key]} {key}, "
                f"{MESH_NPZ} holds {value})"
            )
    log.debug("read result %s (format version %d)", folder, document["version"])
    return result
