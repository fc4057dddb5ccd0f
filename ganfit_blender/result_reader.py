"""Read a ganfit result folder with numpy alone (no bpy, no torch, no Pillow).

Blender bundles numpy but not the engine, so the add-on carries this small reader of the
format specified in ``docs/result-format.md`` (version 1). The engine's own implementation is
``ganfit.io.result``; ``tests/blender/test_result_reader.py`` checks that both read the same
folder to the same values. Images are not decoded here: the texture and photo paths go
straight to ``bpy.data.images.load``, after a check of the PNG's structure (signature, chunk
checksums, declared size) so a damaged or absurd file is refused here with a message, not handed
to Blender. Whatever a folder holds, ``read_result`` returns or raises ``ResultError``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    from .seam import result_schema
except ImportError:  # imported on its own, outside the package (the bpy-free reader's tests)
    from seam import result_schema  # type: ignore[no-redef,import-not-found]

__all__ = [
    "RESULT_FORMAT",
    "RESULT_VERSION",
    "ResultError",
    "CameraData",
    "LightData",
    "ResultData",
    "read_result",
    "model_to_blender",
]

log = logging.getLogger(__name__)

# The format, defined once in the engine (backend/ganfit/io/result_schema.py, vendored by build.py).
RESULT_FORMAT: str = result_schema.RESULT_FORMAT
#: The newest result format version this add-on reads.
RESULT_VERSION: int = result_schema.RESULT_VERSION
RESULT_JSON: str = result_schema.RESULT_JSON
MAX_JSON_BYTES: int = result_schema.MAX_JSON_BYTES
MAX_PNG_PIXELS: int = result_schema.MAX_PNG_PIXELS
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Channels per PNG colour type (grey, RGB, palette, grey + alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Deflate cannot compress better than about 1032:1, so pixel data this many times larger than
#: the compressed data is missing: the file was cut, or only declares a huge size.
_DEFLATE_MAX_RATIO = 1100

#: The head.npz arrays the add-on reads, with their dtypes from the shared table.
_NPZ_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(result_schema.NPZ_ARRAYS[name][0])
    for name in ("vertices", "neutral_vertices", "faces", "uvs", "uv_faces", "expression_deltas")
}

#: (x, y, z) model space (y up, face toward +z) -> Blender (z up, face toward -y): the
#: rotation Blender's glTF importer applies, (x, y, z) -> (x, -z, y).
MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
Int32Array = npt.NDArray[np.int32]


class ResultError(Exception):
    """The folder is not a readable ganfit result; the message says what to do."""


def model_to_blender(points: npt.ArrayLike) -> Float64Array:
    """Convert points or directions (..., 3) from model space to Blender space (float64)."""
    converted: Float64Array = np.asarray(points, dtype=np.float64) @ MODEL_TO_BLENDER.T
    return converted


@dataclass(frozen=True)
class CameraData:
    """The fitted pinhole camera, model space; ``focal`` = focal length / image width."""

    position: Float64Array
    look_at: Float64Array
    up: Float64Array
    focal: float
    width: int
    height: int


@dataclass(frozen=True)
class LightData:
    """One point light (no distance falloff) plus ambient, linear RGB, model space."""

    position: Float64Array
    colour: Float64Array
    ambient: Float64Array


@dataclass(frozen=True)
class ResultData:
    """What the scene import needs from a result folder."""

    folder: Path
    neutral_vertices: Float32Array  # (V, 3) float32, model space
    vertices: Float32Array  # (V, 3) float32, fitted (neutral + weighted deltas)
    faces: Int32Array  # (F, 3) int32
    uvs: Float32Array  # (T, 2) float32, v up
    uv_faces: Int32Array  # (F, 3) int32 into uvs
    expression_names: list[str]
    expression_weights: Float32Array  # (E,) float32
    expression_deltas: Float32Array  # (E, V, 3) float32
    camera: CameraData
    light: LightData
    texture_path: Path
    photo_path: Path | None  # the first source photo if it can still be found
    preview_path: Path | None
    engine_version: str

    @property
    def name(self) -> str:
        """A readable name for the reconstruction: the folder's name."""
        return self.folder.name or "ganfit"


def _vec3(value: Any, what: str) -> Float64Array:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be 3 finite numbers")
    return array


def _locate(path: Path | str) -> Path:
    path = Path(path)
    if path.name == RESULT_JSON and path.is_file():
        return path.parent
    if not path.is_dir():
        raise ResultError(f"{path}: no such result folder; choose the folder holding {RESULT_JSON}")
    if not (path / RESULT_JSON).is_file():
        raise ResultError(f"{path}: not a ganfit result folder ({RESULT_JSON} is missing)")
    return path


def _read_json(json_path: Path) -> Any:
    """Parse result.json, bounded in size; any failure is a one-line ``ResultError``."""
    try:
        with open(json_path, "rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise ResultError(f"{json_path}: cannot be read ({exc.strerror or exc}); check the file's permissions") from exc
    if len(data) > MAX_JSON_BYTES:
        raise ResultError(
            f"{json_path}: too large (over {MAX_JSON_BYTES // 2**20} MB) to be a ganfit result; choose the folder ganfit wrote"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise ResultError(f"{json_path}: damaged (nested too deeply); reconstruct again") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ResultError(f"{json_path}: damaged ({exc}); reconstruct again") from exc


def _check_png(path: Path) -> None:
    """Raise ResultError unless ``path`` is a whole PNG of a sane size: signature, IHDR first,
    every chunk's CRC, IEND last. Needs no image library (Blender decodes the pixels later)."""
    def damaged(why: str) -> ResultError:
        return ResultError(f"{path}: damaged ({why}); reconstruct again")

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResultError(f"{path}: cannot be read ({exc.strerror or exc}); check the file's permissions") from exc
    if not data.startswith(_PNG_SIGNATURE):
        raise damaged("not a PNG image")
    offset, first, raw_bytes, compressed = len(_PNG_SIGNATURE), True, 0, 0
    while True:
        if offset + 12 > len(data):
            raise damaged("the PNG is truncated")
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 8 + length
        if end + 4 > len(data):
            raise damaged("the PNG is truncated")
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[offset + 4 : end]) != crc:
            raise damaged(f"a checksum of the PNG's {kind!r} chunk is wrong")
        if first:
            if kind != b"IHDR" or length != 13:
                raise damaged("the PNG has no header")
            width, height = struct.unpack(">II", data[offset + 8 : offset + 16])
            if width == 0 or height == 0 or width * height > MAX_PNG_PIXELS:
                raise damaged(f"a PNG of {width}x{height} pixels")
            bits = data[offset + 16] * _PNG_CHANNELS.get(data[offset + 17], 1)
            raw_bytes = height * ((width * bits + 7) // 8)  # a lower bound, filter bytes aside
            first = False
        if kind == b"IDAT":
            compressed += length
        if kind == b"IEND":
            if compressed * _DEFLATE_MAX_RATIO < raw_bytes:
                raise damaged(f"{compressed} bytes of pixel data cannot hold {width}x{height} pixels")
            return
        offset = end + 4


def _file(folder: Path, files: Any, role: str, required: bool) -> Path | None:
    name = files.get(role) if isinstance(files, dict) else None
    if name is None:
        if required:
            raise ResultError(f"{folder / RESULT_JSON}: damaged (files.{role} is missing)")
        return None
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
        raise ResultError(f"{folder / RESULT_JSON}: damaged (files.{role} = {name!r} is not a file name)")
    path = folder / name
    if not path.is_file():
        if required:
            raise ResultError(f"{path}: missing; the result folder is incomplete, reconstruct again")
        return None
    return path


def _find_photo(folder: Path, photos: Any) -> Path | None:
    """The first source photo, tried as written, relative to the result folder and its parent."""
    if not isinstance(photos, list) or not photos or not isinstance(photos[0], str):
        return None
    written = Path(photos[0])
    for candidate in (written, folder / written, folder.parent / written, folder / written.name):
        if candidate.is_file():
            return candidate.resolve()
    log.info("source photo %s not found; the camera gets no background image", written)
    return None


def read_result(path: Path | str) -> ResultData:
    """Read and check a result folder (or its result.json); raise ResultError if unusable."""
    folder = _locate(path)
    json_path = folder / RESULT_JSON
    doc = _read_json(json_path)
    if not isinstance(doc, dict) or doc.get("format") != RESULT_FORMAT:
        raise ResultError(f"{json_path}: not a ganfit result (format is not {RESULT_FORMAT!r})")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultError(f"{json_path}: damaged (format version {version!r} is not a positive integer)")
    if version > RESULT_VERSION:
        raise ResultError(
            f"{folder}: written by a newer ganfit (result format version {version}, this add-on "
            f"reads up to {RESULT_VERSION}); update the GANFit extension"
        )
    files = doc.get("files")
    mesh_path = _file(folder, files, "mesh", True)
    texture_path = _file(folder, files, "texture", True)
    assert mesh_path is not None and texture_path is not None
    try:
        with np.load(mesh_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _NPZ_DTYPES}
    except KeyError as exc:
        raise ResultError(f"{mesh_path}: damaged (array {exc} missing); reconstruct again") from exc
    except Exception as exc:  # noqa: BLE001 - truncated, bad deflate data (zlib.error), encrypted, absurd
        # shapes, pickled objects: numpy and zipfile raise many kinds, all meaning "damaged"
        raise ResultError(f"{mesh_path}: damaged ({type(exc).__name__}: {exc}); reconstruct again") from exc
    _check_png(texture_path)

    # a number beyond float32 (1e308) becomes inf, refused by _check: no warning
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            for name, dtype in _NPZ_DTYPES.items():
                if arrays[name].dtype != dtype:
                    raise ValueError(f"{name} has dtype {arrays[name].dtype}, expected {np.dtype(dtype)}")
            cam, light = doc["camera"], doc["light"]
            camera = CameraData(
                position=_vec3(cam["position"], "camera.position"),
                look_at=_vec3(cam["look_at"], "camera.look_at"),
                up=_vec3(cam["up"], "camera.up"),
                focal=float(cam["focal"]),
                width=int(cam["width"]),
                height=int(cam["height"]),
            )
            lights = LightData(
                position=_vec3(light["position"], "light.position"),
                colour=_vec3(light["colour"], "light.colour"),
                ambient=_vec3(light["ambient"], "light.ambient"),
            )
            expressions = doc["expressions"]
            names = [str(item["name"]) for item in expressions]
            weights = np.array([item["weight"] for item in expressions], dtype=np.float32)
            data = ResultData(
                folder=folder,
                neutral_vertices=arrays["neutral_vertices"],
                vertices=arrays["vertices"],
                faces=arrays["faces"],
                uvs=arrays["uvs"],
                uv_faces=arrays["uv_faces"],
                expression_names=names,
                expression_weights=weights,
                expression_deltas=arrays["expression_deltas"],
                camera=camera,
                light=lights,
                texture_path=texture_path,
                photo_path=_find_photo(folder, doc.get("photos")),
                preview_path=_checked(_file(folder, files, "preview", False)),
                engine_version=str(doc.get("engine_version", "")),
            )
            _check(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            raise ResultError(f"{folder}: damaged ({exc}); reconstruct again") from exc
    log.debug("read %s: %d vertices, %d expressions", folder, len(data.neutral_vertices), len(names))
    return data


def _checked(path: Path | None) -> Path | None:
    if path is not None:
        _check_png(path)
    return path


def _check(data: ResultData) -> None:
    """Raise ValueError on inconsistent sizes, indices or values."""
    n_vert = data.neutral_vertices.shape[0]
    if data.neutral_vertices.shape != (n_vert, 3) or n_vert == 0 or data.vertices.shape != (n_vert, 3):
        raise ValueError(f"vertices have shapes {data.vertices.shape}, {data.neutral_vertices.shape}")
    if data.faces.ndim != 2 or data.faces.shape[1] != 3 or data.faces.shape[0] == 0:
        raise ValueError(f"faces have shape {data.faces.shape}")
    if data.uv_faces.shape != data.faces.shape or data.uvs.ndim != 2 or data.uvs.shape[1] != 2:
        raise ValueError(f"uvs {data.uvs.shape} / uv_faces {data.uv_faces.shape} do not fit faces {data.faces.shape}")
    for name, array, count in (("faces", data.faces, n_vert), ("uv_faces", data.uv_faces, len(data.uvs))):
        if array.min() < 0 or array.max() >= count:
            raise ValueError(f"{name}: indices outside [0, {count})")
    n_expr = len(data.expression_names)
    if data.expression_deltas.shape != (n_expr, n_vert, 3) or data.expression_weights.shape != (n_expr,):
        raise ValueError(
            f"{n_expr} expression names but deltas of shape {data.expression_deltas.shape}"
        )
    if len(set(data.expression_names)) != n_expr:
        raise ValueError("expression names are not unique")
    for name in ("neutral_vertices", "vertices", "uvs", "expression_deltas", "expression_weights"):
        if not np.all(np.isfinite(getattr(data, name))):
            raise ValueError(f"{name} contains NaN or infinity")
    cam = data.camera
    if not (np.isfinite(cam.focal) and cam.focal > 0) or cam.width <= 0 or cam.height <= 0:
        raise ValueError(f"camera focal {cam.focal} / size {cam.width}x{cam.height} is not positive")
    forward = cam.look_at - cam.position
    if np.linalg.norm(np.cross(forward, cam.up)) == 0:
        raise ValueError("camera look_at equals position or up is parallel to the view")
