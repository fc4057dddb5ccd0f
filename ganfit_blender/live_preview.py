"""The head as it fits: a temporary mesh built from the engine's ``topology`` and ``mesh``
events (docs/protocol.md), updated in place, removed when the reconstruction ends.

The preview lives in its own collection, ``GANFit preview``, and is found by name each time
(never through a kept Python reference: undo and file loads invalidate those). It is always
removed when the job ends, whatever the outcome: on ``done`` the real import replaces it.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import bpy
import numpy as np
import numpy.typing as npt
from mathutils import Vector

from .result_reader import Float32Array, model_to_blender
from .scene_import import DEFAULT_CLEARANCE, PREVIEW_PROPERTY, free_offset

__all__ = ["PREVIEW_PROPERTY", "PreviewError", "decode_array", "LivePreview"]

log = logging.getLogger(__name__)

# PREVIEW_PROPERTY (from scene_import): on the preview's object and collection, the job id.


class PreviewError(ValueError):
    """An event's array does not decode to the announced shape."""


def decode_array(event: dict[str, Any], key: str, dtype: str, rows: int, columns: int = 3) -> npt.NDArray[Any]:
    """The base64 array ``event[key]`` as (rows, columns) of little-endian ``dtype``."""
    try:
        raw = base64.b64decode(str(event[key]), validate=True)
    except (KeyError, ValueError) as exc:
        raise PreviewError(f"{event.get('type')} event: no valid base64 {key!r} ({exc})") from exc
    array = np.frombuffer(raw, dtype=np.dtype(dtype))
    if array.size != rows * columns:
        raise PreviewError(f"{event.get('type')} event: {key!r} holds {array.size} values, expected {rows * columns}")
    return array.reshape(rows, columns)


_ID = TypeVar("_ID", bound=bpy.types.ID)


def _lookup(blocks: bpy.types.bpy_prop_collection[_ID], name: str) -> _ID | None:
    """``blocks[name]`` or None (fake-bpy types ``bpy_prop_collection.get`` as always None)."""
    return blocks[name] if name and name in blocks else None


@dataclass
class _Names:
    collection: str
    obj: str
    mesh: str


class LivePreview:
    """One job's preview mesh. ``topology`` then ``mesh`` events feed it; ``remove`` ends it."""

    def __init__(self, job: str, name: str = "GANFit preview"):
        self.job = job
        self.name = name
        self.faces: npt.NDArray[np.int32] | None = None
        self.vertex_count = 0
        self.updates = 0
        self._names: _Names | None = None

    @property
    def object_name(self) -> str | None:
        return self._names.obj if self._names is not None else None

    def topology(self, event: dict[str, Any]) -> None:
        """Remember the triangles (sent once per job, before the first ``mesh``)."""
        self.vertex_count = int(event["vertex_count"])
        faces = decode_array(event, "faces", "<i4", int(event["face_count"]))
        if faces.size and (faces.min() < 0 or faces.max() >= self.vertex_count):
            raise PreviewError("topology event: face indices out of range")
        self.faces = faces

    def update(self, scene: bpy.types.Scene, event: dict[str, Any]) -> None:
        """Show the event's vertices: builds the preview on the first call, then moves it."""
        if self.faces is None:
            raise PreviewError("mesh event before the topology event")
        points = decode_array(event, "vertices", "<f4", self.vertex_count)
        coords = model_to_blender(points).astype(np.float32).ravel()
        mesh = self._mesh()
        if mesh is None:
            mesh = self._build(scene, coords)
        else:
            mesh.vertices.foreach_set("co", coords)
            mesh.update()
        self.updates += 1

    def _mesh(self) -> bpy.types.Mesh | None:
        if self._names is None:
            return None
        obj = _lookup(bpy.data.objects, self._names.obj)
        if obj is None or obj.get(PREVIEW_PROPERTY) != self.job or not isinstance(obj.data, bpy.types.Mesh):
            return None  # the artist deleted it, or undo took it: build it again
        mesh = obj.data
        return mesh if len(mesh.vertices) == self.vertex_count else None

    def _build(self, scene: bpy.types.Scene, coords: Float32Array) -> bpy.types.Mesh:
        """A mesh of the head's triangles at ``coords``, smooth shaded, in its own collection;
        if any step fails, what was made is removed again."""
        self.remove()
        assert self.faces is not None
        faces = self.faces
        mesh = bpy.data.meshes.new(self.name)
        mesh[PREVIEW_PROPERTY] = self.job
        self._names = _Names(collection="", obj="", mesh=mesh.name)
        try:
            mesh.vertices.add(self.vertex_count)
            mesh.vertices.foreach_set("co", coords)
            mesh.loops.add(faces.size)
            mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
            mesh.polygons.add(len(faces))
            mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
            mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, dtype=np.int32))
            mesh.update(calc_edges=True)
            mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
            obj = bpy.data.objects.new(self.name, mesh)
            obj[PREVIEW_PROPERTY] = self.job
            self._names.obj = obj.name
            collection = bpy.data.collections.new(self.name)
            collection[PREVIEW_PROPERTY] = self.job
            self._names.collection = collection.name
            collection.objects.link(obj)
            # Where the result will land: clear of the scene's meshes, not inside the cube.
            low = Vector(coords.reshape(-1, 3).min(axis=0).tolist())
            high = Vector(coords.reshape(-1, 3).max(axis=0).tolist())
            obj.location = free_offset(scene, low, high, DEFAULT_CLEARANCE, ignore=(obj,))
            scene.collection.children.link(collection)
        except Exception:
            self.remove()
            raise
        log.debug("live preview %s built (%d vertices)", obj.name, self.vertex_count)
        return mesh

    def remove(self) -> None:
        """Delete the preview object, its mesh and collection, if they still exist."""
        names, self._names = self._names, None
        if names is None:
            return
        self._remove_one(bpy.data.objects, names.obj)
        self._remove_one(bpy.data.meshes, names.mesh)
        self._remove_one(bpy.data.collections, names.collection)

    def _remove_one(self, blocks: Any, name: str) -> None:
        block = _lookup(blocks, name)
        if block is None or block.get(PREVIEW_PROPERTY) != self.job:
            return  # gone, or a datablock of the artist's that took the name after undo
        try:
            blocks.remove(block)
        except (ReferenceError, RuntimeError) as exc:
            log.debug("preview cleanup: %s", exc)
