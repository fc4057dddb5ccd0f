"""The result folder's format, written once (issue 18, "One seam, defined once").

Standard library only: ``build.py`` copies this file into the Blender extension
(``ganfit_blender/_seam/result_schema.py``), where the add-on's reader uses it through
``ganfit_blender/seam.py``; the engine's ``io/result.py`` imports it directly. The format's
name and version, its file names, the arrays of head.npz and the readers' size limits are
therefore the same on both sides (docs/result-format.md describes them).
"""

from __future__ import annotations

RESULT_FORMAT = "ganfit-result"
#: Major version. Additive changes (new optional keys or files) keep it; anything an older
#: reader would misread bumps it, and older readers refuse the folder (docs/result-format.md).
RESULT_VERSION = 1

RESULT_JSON = "result.json"
MESH_NPZ = "head.npz"
TEXTURE_PNG = "texture.png"
PREVIEW_PNG = "preview.png"
OBJ_FILE = "head.obj"
MTL_FILE = "head.mtl"
GLB_FILE = "head.glb"

#: Arrays stored in head.npz: name -> (numpy dtype string, shape with letters for sizes that
#: must agree: V vertices, F faces, T UV coordinates, E expressions, L landmarks).
NPZ_ARRAYS: dict[str, tuple[str, tuple[int | str, ...]]] = {
    "vertices": ("<f4", ("V", 3)),
    "neutral_vertices": ("<f4", ("V", 3)),
    "faces": ("<i4", ("F", 3)),
    "uvs": ("<f4", ("T", 2)),
    "uv_faces": ("<i4", ("F", 3)),
    "expression_deltas": ("<f4", ("E", "V", 3)),
    "landmark_indices": ("<i4", ("L",)),
    "landmarks_2d": ("<f4", ("L", 2)),
}

#: result.json is read only up to this size: a real one is tens of kB, and a reader (or
#: ``--force`` deciding what it may delete) must not load an arbitrary file into memory.
MAX_JSON_BYTES = 16 * 1024 * 1024
#: A PNG declaring more pixels than this is refused before it is decoded (Pillow's own
#: decompression-bomb limit): 13,000 x 13,000 is far above any texture or photo we write.
MAX_PNG_PIXELS = 178_956_970
