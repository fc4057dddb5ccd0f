"""Export a reconstruction as binary glTF 2.0 (.glb), written by hand with json + struct.

Why by hand: the format is small, and a dependency (pygltflib, trimesh) would have to travel
into the Blender extension. What goes in:

- one mesh whose base shape is the *neutral* head, with one morph target per expression and
  ``mesh.weights`` = the fitted weights, so viewers show the fitted face and artists get
  sliders (``mesh.extras.targetNames``, the convention Blender and three.js read);
- smooth vertex normals (and their per-target deltas, as Blender's own exporter writes);
- a metallic 0 / roughness 0.6 PBR material with the UV texture embedded as PNG;
- the fitted camera as a perspective camera node, and the point light through
  ``KHR_lights_punctual`` (glTF lights fall off with distance and ours does not, so the light is
  approximate; the exact values ride along in ``extras``, and ambient in the scene's extras).

glTF wants one index per vertex while the model has separate position and UV indices, so
vertices are split where a position carries several UVs (``split_uv_seams``); morph deltas and
normals are carried through the split, so the seams stay closed when the sliders move.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ganfit import __version__ as ENGINE_VERSION
from ganfit.errors import OutputError
from ganfit.io.atomic import atomic_file
from ganfit.io.result import RESULT_FORMAT, Reconstruction, encode_png

__all__ = [
    "export_glb",
    "glb_document",
    "split_uv_seams",
    "vertex_normals",
    "morph_normal_deltas",
    "camera_matrix",
    "ROUGHNESS",
]

log = logging.getLogger(__name__)

ROUGHNESS = 0.6  # skin is neither glossy nor chalk; Phong-fitted albedo has no roughness of its own

_GLB_MAGIC = 0x46546C67  # "glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_FLOAT, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def split_uv_seams(
    faces: np.ndarray, uv_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One output vertex per distinct (position, uv) corner pair.

    Returns ``vertex_index`` (N,) into the positions, ``uv_index`` (N,) into the UVs, and the
    re-indexed ``faces`` (F, 3). Output vertices are sorted by position index, so copies of a
    seam vertex sit together; vertices no face uses are dropped.
    """
    faces = np.asarray(faces, dtype=np.int64)
    uv_faces = np.asarray(uv_faces, dtype=np.int64)
    n_uv = int(uv_faces.max()) + 1 if uv_faces.size else 1
    keys = faces.reshape(-1) * n_uv + uv_faces.reshape(-1)
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique // n_uv, unique % n_uv, inverse.reshape(-1, 3)


def _normal_sums(vertices: np.ndarray, faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(num_vertices, 3) sums of the area-weighted normals of ``faces`` at their corners."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    # Each face's normal summed into its three corners: bincount is ~4x faster than np.add.at.
    keys = np.asarray(faces).reshape(-1)
    return np.stack([np.bincount(keys, weights=np.repeat(face_normals[:, axis], 3), minlength=num_vertices)
                     for axis in range(3)], -1)


def _unit(sums: np.ndarray) -> np.ndarray:
    """Rows of ``sums`` scaled to unit length; zero rows become +z."""
    length = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(length > 0, sums / np.where(length > 0, length, 1.0), [0.0, 0.0, 1.0])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Smooth, area-weighted unit vertex normals (float64); unused vertices get +z."""
    vertices = np.asarray(vertices, dtype=np.float64)
    return _unit(_normal_sums(vertices, faces, len(vertices)))


def morph_normal_deltas(
    neutral: np.ndarray, deltas: np.ndarray, faces: np.ndarray, neutral_normals: np.ndarray
) -> np.ndarray:
    """(E, V, 3) float64: ``vertex_normals(neutral + deltas[e]) - neutral_normals`` for each
    expression, the same numbers as computing it so, in half the time (see
    ``_morph_normal_rows``)."""
    return _morph_normal_rows(neutral, deltas, faces, neutral_normals).transpose(0, 2, 1)


def _morph_normal_rows(
    neutral: np.ndarray, deltas: np.ndarray, faces: np.ndarray, neutral_normals: np.ndarray
) -> np.ndarray:
    """``morph_normal_deltas`` as (E, 3, V) rows, the layout it is computed in.

    A vertex's normal changes only if a face around it has a moving vertex. An expression
    moves a fifth of the head's vertices (the brows, the jaw), so its normals are computed on
    the faces around the affected vertices only, in the original order and with np.cross's
    arithmetic (the same sums to the last bit); every other vertex's delta is exactly zero, as
    it was when computed. Coordinates are kept as contiguous rows (3, V): numpy is several
    times slower on the strided columns of (V, 3). Which faces and vertices each expression
    touches depends on the basis and the triangles only, the same in every result of a model,
    so that plan is worked out once (``_morph_plan``) and only the arithmetic is per result."""
    neutral = np.asarray(neutral, dtype=np.float64)
    faces = np.asarray(faces)
    deltas = np.asarray(deltas)
    count, num_vertices = len(deltas), len(neutral)
    out = np.zeros((count, 3, num_vertices))
    if count == 0 or len(faces) == 0:
        return out
    neutral_rows = np.ascontiguousarray(neutral.T)
    normal_rows = np.ascontiguousarray(np.asarray(neutral_normals, dtype=np.float64).T)
    for e, (where, used, ring, keys, where_used) in enumerate(_morph_plan(deltas, faces, num_vertices)):
        if not len(where):
            continue
        # the moved positions of the vertices the ring uses only (the same sums as over all)
        moved = np.take(neutral_rows, used, axis=1) + np.take(deltas[e], used, axis=0).T
        p0, p1, p2 = (np.take(moved, ring[k], axis=1) for k in range(3))
        a, b = p1 - p0, p2 - p0
        cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
        # as _normal_sums: each face's normal summed into its corners, in the faces' order
        # (numbered among the used vertices: the same additions in the same order per vertex)
        sums = [np.bincount(keys, weights=np.repeat(c, 3), minlength=len(used)).take(where_used) for c in cross]
        length = np.sqrt(sums[0] * sums[0] + sums[1] * sums[1] + sums[2] * sums[2])
        ok = length > 0
        safe = np.where(ok, length, 1.0)
        for axis, unused in enumerate((0.0, 0.0, 1.0)):  # as _unit: a vertex with no area gets +z
            out[e, axis, where] = np.where(ok, sums[axis] / safe, unused) - normal_rows[axis].take(where)
    return out


#: The last ``_morph_plan``: (faces bytes, deltas bytes, vertex count, plan); one model at a time.
_MORPH_PLAN: list[tuple[bytes, bytes, int, list[tuple[np.ndarray, ...]]]] = []
_MORPH_PLAN_LOCK = threading.Lock()


def _morph_plan(deltas: np.ndarray, faces: np.ndarray, num_vertices: int) -> list[tuple[np.ndarray, ...]]:
    """Per expression: the vertices whose normal it changes (``where``), the vertices the faces
    around them use (``used``, sorted), those faces' corners as indices into ``used`` (3, n),
    the corners flattened face by face (``keys``, as _normal_sums adds them), and ``where`` as
    indices into ``used``. Remembered for the last basis and triangles (compared byte for
    byte, ~1 ms), since every result of a model brings the same ones (~15 ms to work out)."""
    faces_bytes, deltas_bytes = faces.tobytes(), deltas.tobytes()
    with _MORPH_PLAN_LOCK:
        for known_faces, known_deltas, known_count, plan in _MORPH_PLAN:
            if known_count == num_vertices and known_faces == faces_bytes and known_deltas == deltas_bytes:
                return plan
    count = len(deltas)
    corners = [np.ascontiguousarray(faces[:, k]) for k in range(3)]

    def any_corner(per_vertex: np.ndarray) -> np.ndarray:  # (E, V) -> (E, F)
        return np.take(per_vertex, corners[0], axis=1) | np.take(per_vertex, corners[1], axis=1) \
            | np.take(per_vertex, corners[2], axis=1)

    nonzero = deltas != 0
    moved_faces = any_corner(nonzero[..., 0] | nonzero[..., 1] | nonzero[..., 2])
    # affected: the corners of moved faces (set, so a corner listed twice does no harm)
    expression, face = np.nonzero(moved_faces)
    affected = np.zeros((count, num_vertices), dtype=bool)
    for corner in corners:
        affected.reshape(-1)[expression * num_vertices + corner[face]] = True
    around = any_corner(affected)
    plan = []
    for e in range(count):
        where = np.flatnonzero(affected[e])
        ring = faces[around[e]]
        used, local = np.unique(ring, return_inverse=True)
        local = local.reshape(ring.shape)
        plan.append((where, used, np.ascontiguousarray(local.T), local.reshape(-1), np.searchsorted(used, where)))
    with _MORPH_PLAN_LOCK:
        _MORPH_PLAN[:] = [(faces_bytes, deltas_bytes, num_vertices, plan)]
    return plan


def camera_matrix(position: np.ndarray, look_at: np.ndarray, up: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world matrix; the camera looks down its local -z with +y up (glTF, OpenGL)."""
    position = np.asarray(position, dtype=np.float64)
    forward = np.asarray(look_at, dtype=np.float64) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, true_up, -forward, position
    return matrix


class _BinaryBuilder:
    """Collects buffer views and accessors in one BIN chunk, each view 4-byte aligned.

    The views are kept as a list of buffers (arrays are not copied) and joined once: the BIN
    chunk is 6.5 MB, and growing one bytearray copied it three times over."""

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.length = 0
        self.buffer_views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def view(self, payload: bytes | memoryview, target: int | None = None) -> int:
        padding = -self.length % 4
        if padding:
            self.parts.append(b"\0" * padding)
            self.length += padding
        size = memoryview(payload).nbytes
        view: dict[str, Any] = {"buffer": 0, "byteOffset": self.length, "byteLength": size}
        if target is not None:
            view["target"] = target
        self.parts.append(payload)
        self.length += size
        self.buffer_views.append(view)
        return len(self.buffer_views) - 1

    def data(self) -> bytes:
        """The BIN chunk's content."""
        return b"".join(self.parts)

    def accessor(
        self,
        array: np.ndarray,
        kind: str,
        *,
        target: int | None = _ARRAY_BUFFER,
        bounds: bool | tuple[np.ndarray, np.ndarray] = False,
    ) -> int:
        """``bounds``: True to store the per-component min and max, or them computed already."""
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        accessor: dict[str, Any] = {
            "bufferView": self.view(memoryview(array).cast("B"), target),
            "componentType": _component(array.dtype),
            "count": int(array.shape[0]) if kind != "SCALAR" else int(array.size),
            "type": kind,
        }
        if bounds is True:
            bounds = _bounds(array.reshape(1, accessor["count"], -1))
            bounds = (bounds[0][0], bounds[1][0])
        return self._add(accessor, bounds)

    def sparse_accessor(
        self,
        count: int,
        kind: str,
        rows: np.ndarray,
        values: np.ndarray,
        *,
        bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """An accessor of ``count`` elements, zero but for ``rows`` (increasing), which hold
        ``values`` (a glTF sparse accessor; with no rows at all, no data: glTF's zeros)."""
        values = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
        accessor: dict[str, Any] = {"componentType": _component(values.dtype), "count": int(count), "type": kind}
        if len(rows):
            index_dtype = np.dtype("<u2") if count <= 0xFFFF else np.dtype("<u4")
            accessor["sparse"] = {
                "count": len(rows),
                "indices": {
                    "bufferView": self.view(memoryview(rows.astype(index_dtype)).cast("B")),
                    "componentType": _component(index_dtype),
                },
                "values": {"bufferView": self.view(memoryview(values).cast("B"))},
            }
        return self._add(accessor, bounds if bounds is not None else False)

    def _add(self, accessor: dict[str, Any], bounds: bool | tuple[np.ndarray, np.ndarray]) -> int:
        if bounds is not False and bounds is not True:
            accessor["min"] = bounds[0].tolist()
            accessor["max"] = bounds[1].tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def _component(dtype: np.dtype) -> int:
    """glTF's componentType of a numpy dtype."""
    if dtype == np.float32:
        return _FLOAT
    if dtype == np.uint16:
        return _UNSIGNED_SHORT
    if dtype == np.uint32:
        return _UNSIGNED_INT
    raise TypeError(f"unsupported accessor dtype {dtype}")


def _bounds(arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-component min and max (B, C) of a batch of arrays (B, N, C), as float64 (what JSON
    stores). Taken along contiguous rows: numpy's min over axis 1 of (B, N, 3) is 20x slower."""
    columns = np.ascontiguousarray(arrays.transpose(0, 2, 1))
    return columns.min(axis=2).astype(np.float64), columns.max(axis=2).astype(np.float64)


def _target_accessor(
    builder: _BinaryBuilder, rows: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> int:
    """A morph target's VEC3 accessor from its deltas given as rows (3, N), stored as float32:
    sparse (the elements that are not zero, with their indices, 14 bytes each for 12) when
    that is smaller.

    An expression moves a fifth of the head, so its targets take a quarter of the bytes: the
    .glb is 2.0 MB instead of 6.5, faster to write and flush (a result folder 13 ms sooner) and
    to load. Blender's own glTF exporter makes the same choice (its "sparse accessor if better"
    option, on by default); its importer and every glTF 2.0 loader read sparse accessors."""
    count = rows.shape[1]
    nonzero = rows != 0
    moving = np.flatnonzero(nonzero[0] | nonzero[1] | nonzero[2])
    if len(moving) * ((2 if count <= 0xFFFF else 4) + 12) < count * 12:
        values = np.take(rows, moving, axis=1).T.astype(np.float32, order="C")
        return builder.sparse_accessor(count, "VEC3", moving, values, bounds=bounds)
    return builder.accessor(rows.T.astype(np.float32, order="C"), "VEC3",
                            bounds=bounds if bounds is not None else False)


def _glb_bytes(document: dict[str, Any], binary: list[bytes | memoryview], length: int) -> bytes:
    """The .glb file: header, JSON chunk, and the BIN chunk from its parts (``length`` bytes)."""
    json_chunk = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)
    padding = b"\0" * (-length % 4)
    total = 12 + 8 + len(json_chunk) + 8 + length + len(padding)
    return b"".join(
        [
            struct.pack("<III", _GLB_MAGIC, 2, total),
            struct.pack("<II", len(json_chunk), _CHUNK_JSON),
            json_chunk,
            struct.pack("<II", length + len(padding), _CHUNK_BIN),
            *binary,
            padding,
        ]
    )


def glb_document(
    result: Reconstruction, *, morph_normals: bool = True, texture_png: bytes | None = None
) -> tuple[dict[str, Any], bytes]:
    """The glTF JSON document and BIN chunk for ``result`` (separate so tests can inspect);
    ``texture_png``: the texture already encoded (the result folder's texture.png), so it is
    not compressed twice."""
    document, builder = _glb_document(result, morph_normals=morph_normals, texture_png=texture_png)
    return document, builder.data()


def _glb_document(
    result: Reconstruction, *, morph_normals: bool, texture_png: bytes | None
) -> tuple[dict[str, Any], _BinaryBuilder]:
    """``glb_document`` with the BIN chunk still in parts, so the file is joined only once."""
    vertex_index, uv_index, faces = split_uv_seams(result.faces, result.uv_faces)
    neutral_normals = vertex_normals(result.neutral_vertices, result.faces)
    builder = _BinaryBuilder()

    positions = result.neutral_vertices[vertex_index].astype(np.float32)
    texcoords = result.uvs[uv_index].astype(np.float32)
    texcoords[:, 1] = 1.0 - texcoords[:, 1]  # glTF's v runs down the image
    attributes = {
        "POSITION": builder.accessor(positions, "VEC3", bounds=True),
        "NORMAL": builder.accessor(neutral_normals[vertex_index].astype(np.float32), "VEC3"),
        "TEXCOORD_0": builder.accessor(texcoords, "VEC2"),
    }
    index_dtype = np.uint16 if len(vertex_index) <= 0xFFFF else np.uint32
    indices = builder.accessor(
        faces.reshape(-1).astype(index_dtype), "SCALAR", target=_ELEMENT_ARRAY_BUFFER
    )

    targets = []
    # The targets as rows (E, 3, N): numpy is several times faster along contiguous rows than
    # along the strided columns of (E, N, 3), which the file wants only for dense targets.
    delta_rows = np.ascontiguousarray(result.expression_deltas.transpose(0, 2, 1))
    position_rows = np.take(delta_rows, vertex_index, axis=2)
    lows, highs = position_rows.min(axis=2).astype(np.float64), position_rows.max(axis=2).astype(np.float64)
    if morph_normals:
        normal_rows = np.take(
            _morph_normal_rows(result.neutral_vertices, result.expression_deltas, result.faces, neutral_normals),
            vertex_index, axis=2)
    for e in range(len(result.expression_names)):
        target = {"POSITION": _target_accessor(builder, position_rows[e], (lows[e], highs[e]))}
        if morph_normals:
            target["NORMAL"] = _target_accessor(builder, normal_rows[e])
        targets.append(target)

    image_view = builder.view(texture_png if texture_png is not None else encode_png(result.texture))

    primitive: dict[str, Any] = {
        "attributes": attributes,
        "indices": indices,
        "material": 0,
        "mode": 4,
    }
    mesh: dict[str, Any] = {"name": "head", "primitives": [primitive]}
    if targets:
        primitive["targets"] = targets
        mesh["weights"] = [float(w) for w in result.expression_weights]
        mesh["extras"] = {"targetNames": list(result.expression_names)}

    camera, light = result.camera, result.light
    peak = float(np.max(light.colour))
    colour = (light.colour / peak).tolist() if peak > 0 else [0.0, 0.0, 0.0]
    document: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": f"ganfit {ENGINE_VERSION}"},
        "extensionsUsed": ["KHR_lights_punctual"],
        "extensions": {
            "KHR_lights_punctual": {
                "lights": [
                    {
                        "name": "light",
                        "type": "point",
                        "color": colour,
                        "intensity": max(peak, 0.0),
                        "extras": {"ganfit": {"colour": light.colour.tolist(), "falloff": "none"}},
                    }
                ]
            }
        },
        "scene": 0,
        "scenes": [
            {
                "name": "ganfit",
                "nodes": [0, 1, 2],
                "extras": {
                    "ganfit": {
                        "format": RESULT_FORMAT,
                        "engine_version": result.engine_version,
                        "ambient": light.ambient.tolist(),
                    }
                },
            }
        ],
        "nodes": [
            {"name": "head", "mesh": 0},
            {
                "name": "camera",
                "camera": 0,
                "matrix": camera_matrix(camera.position, camera.look_at, camera.up)
                .T.reshape(-1)
                .tolist(),
            },
            {
                "name": "light",
                "translation": light.position.tolist(),
                "extensions": {"KHR_lights_punctual": {"light": 0}},
            },
        ],
        "cameras": [
            {
                "name": "camera",
                "type": "perspective",
                "perspective": {
                    "yfov": camera.yfov,
                    "aspectRatio": camera.width / camera.height,
                    "znear": 0.01,
                    "zfar": 100.0,
                },
            }
        ],
        "meshes": [mesh],
        "materials": [
            {
                "name": "ganfit_face",
                "pbrMetallicRoughness": {
                    "baseColorTexture": {"index": 0},
                    "metallicFactor": 0.0,
                    "roughnessFactor": ROUGHNESS,
                },
            }
        ],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [
            # clamp: a UV atlas must not bleed across its edges
            {
                "magFilter": _LINEAR,
                "minFilter": _LINEAR_MIPMAP_LINEAR,
                "wrapS": _CLAMP_TO_EDGE,
                "wrapT": _CLAMP_TO_EDGE,
            }
        ],
        "images": [{"name": "texture", "bufferView": image_view, "mimeType": "image/png"}],
        "accessors": builder.accessors,
        "bufferViews": builder.buffer_views,
        "buffers": [{"byteLength": builder.length}],
    }
    return document, builder


def export_glb(
    result: Reconstruction, path: Path | str, *, force: bool = False, morph_normals: bool = True,
    texture_png: bytes | None = None,
) -> Path:
    """Write ``result`` as a self-contained .glb at ``path`` (atomically); return ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise OutputError(f"{path}: a glTF binary export needs a name ending in .glb")
    document, builder = _glb_document(result, morph_normals=morph_normals, texture_png=texture_png)
    payload = _glb_bytes(document, builder.parts, builder.length)
    with atomic_file(path, force=force) as tmp:
        tmp.write_bytes(payload)
    log.info(
        "exported %s (%d vertices after seam split, %d morph targets, %.1f MB)",
        path,
        document["accessors"][0]["count"],
        len(result.expression_names),
        len(payload) / 1e6,
    )
    return path
