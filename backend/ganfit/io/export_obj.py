"""Export a reconstruction as Wavefront OBJ + MTL + texture PNG.

OBJ keeps separate position and UV indices (``f v/vt``), so unlike glTF no vertex is split at
UV seams: the OBJ has exactly the model's vertices in the model's order, which keeps it in
correspondence with the head model for artists who wrap or retopologise. OBJ has no morph
targets, so it holds the fitted face (identity + expression).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ganfit import __version__ as ENGINE_VERSION
from ganfit.errors import OutputError
from ganfit.io.atomic import atomic_file
from ganfit.io.result import Reconstruction, write_png

__all__ = ["export_obj", "MATERIAL_NAME"]

log = logging.getLogger(__name__)

MATERIAL_NAME = "ganfit_face"


def _rows(fmt: str, array: np.ndarray) -> str:
    """Format an array row by row: one ``%`` over a format repeated per row, a third faster
    than formatting each row (tens of thousands of rows per export)."""
    if len(array) == 0:
        return ""
    return ((fmt + "\n") * len(array)) % tuple(array.reshape(-1).tolist())


def _obj_text(result: Reconstruction, mtl_name: str) -> str:
    vertices = result.vertices.astype(np.float64)
    uvs = result.uvs.astype(np.float64)
    corners = np.stack([result.faces + 1, result.uv_faces + 1], axis=-1).reshape(-1, 6)
    header = (
        f"# ganfit {ENGINE_VERSION}: reconstructed head, metres, y up, face toward +z\n"
        f"# {len(vertices)} vertices, {len(uvs)} texture coordinates, {len(corners)} triangles\n"
        f"mtllib {mtl_name}\n"
        "o head\n"
    )
    # %.9g round-trips float32 exactly
    return (
        header
        + _rows("v %.9g %.9g %.9g", vertices)
        + _rows("vt %.9g %.9g", uvs)
        + f"usemtl {MATERIAL_NAME}\ns 1\n"
        + _rows("f %d/%d %d/%d %d/%d", corners)
    )


def _mtl_text(texture_name: str) -> str:
    # Diffuse only: the fitted texture is albedo; Ks 0 keeps importers from adding a shine.
    return (
        f"# ganfit {ENGINE_VERSION}\n"
        f"newmtl {MATERIAL_NAME}\n"
        "Ka 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
        f"map_Kd {texture_name}\n"
    )


def export_obj(
    result: Reconstruction,
    path: Path | str,
    *,
    texture_name: str | None = None,
    write_texture: bool = True,
    force: bool = False,
) -> Path:
    """Write ``path`` (.obj), the .mtl beside it, and the texture PNG beside it; return ``path``.

    The texture is ``<stem>.png`` unless ``texture_name`` (a file name in the same folder) is
    given; ``write_texture=False`` references an existing PNG (the result folder's
    texture.png). Each file is replaced atomically; existing files need ``force``.
    """
    path = Path(path)
    if path.suffix.lower() != ".obj":
        raise OutputError(f"{path}: an OBJ export needs a name ending in .obj")
    mtl_path = path.with_suffix(".mtl")
    texture_name = texture_name or f"{path.stem}.png"
    if Path(texture_name).name != texture_name:
        raise ValueError(f"texture_name must be a plain file name, got {texture_name!r}")
    texture_path = path.parent / texture_name
    targets = [path, mtl_path] + ([texture_path] if write_texture else [])
    if not force:
        for target in targets:
            if target.exists():
                raise OutputError(
                    f"{target}: already exists; pass --force to replace it or choose another file"
                )

    if write_texture:
        with atomic_file(texture_path, force=force) as tmp:
            write_png(result.texture, tmp)
    with atomic_file(mtl_path, force=force) as tmp:
        tmp.write_text(_mtl_text(texture_name), encoding="utf-8")
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(_obj_text(result, mtl_path.name), encoding="utf-8")
    log.info(
        "exported %s (%d vertices, %d triangles)", path, len(result.vertices), len(result.faces)
    )
    return path
