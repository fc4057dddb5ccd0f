"""OBJ and glTF exports: parse them back and check they hold the reconstruction."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ganfit.errors import OutputError
from ganfit.io.export_gltf import (
    camera_matrix,
    export_glb,
    morph_normal_deltas,
    split_uv_seams,
    vertex_normals,
)
from ganfit.io.export_obj import export_obj
from ganfit.io.result import GLB_FILE, MTL_FILE, OBJ_FILE, TEXTURE_PNG, Reconstruction, write_result
from test_result_io import RING, RINGS, synthetic_reconstruction


@pytest.fixture
def recon() -> Reconstruction:
    return synthetic_reconstruction()


# --- seam splitting and normals -------------------------------------------------------------


def test_split_uv_seams(recon: Reconstruction) -> None:
    vertex_index, uv_index, faces = split_uv_seams(recon.faces, recon.uv_faces)
    # the cylinder's first column carries u = 0 and u = 1: one extra vertex per ring
    assert len(vertex_index) == len(recon.vertices) + RINGS == len(recon.uvs)
    assert np.array_equal(vertex_index[faces], recon.faces)
    assert np.array_equal(uv_index[faces], recon.uv_faces)
    assert len({(int(v), int(t)) for v, t in zip(vertex_index, uv_index, strict=True)}) == len(
        vertex_index
    )
    assert np.all(np.diff(vertex_index) >= 0)  # copies of a seam vertex sit together


def test_vertex_normals_point_outward(recon: Reconstruction) -> None:
    normals = vertex_normals(recon.neutral_vertices, recon.faces)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    radial = recon.neutral_vertices.astype(np.float64) * [1, 0, 1]
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    middle = slice(RING, 2 * RING)  # the middle ring: neighbours on both sides, normals are radial
    assert np.allclose(normals[middle], radial[middle], atol=1e-6)


def test_morph_normal_deltas_equal_recomputing_every_normal(recon: Reconstruction) -> None:
    """Only the normals around moving vertices are recomputed; the numbers must be those of
    recomputing them all, bit for bit, for sparse, dense and empty deltas alike."""
    rng = np.random.default_rng(3)
    count = len(recon.neutral_vertices)
    sparse = np.zeros((count, 3), np.float32)
    sparse[rng.choice(count, 5, replace=False)] = rng.normal(0, 0.01, (5, 3))
    deltas = np.stack([sparse, rng.normal(0, 0.01, (count, 3)).astype(np.float32), np.zeros((count, 3), np.float32),
                       *recon.expression_deltas])
    neutral_normals = vertex_normals(recon.neutral_vertices, recon.faces)
    got = morph_normal_deltas(recon.neutral_vertices, deltas, recon.faces, neutral_normals)
    want = np.stack([vertex_normals(recon.neutral_vertices.astype(np.float64) + d, recon.faces) - neutral_normals
                     for d in deltas])
    assert np.array_equal(got, want)
    assert not got[2].any() and got[0].any()


def test_camera_matrix_looks_at_the_target() -> None:
    matrix = camera_matrix(
        np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 0.0]), np.array([0.0, 1.0, 0.0])
    )
    assert np.allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3))
    assert np.allclose(matrix[:3, 3], [1, 2, 3])
    forward = matrix[:3, :3] @ [0, 0, -1]
    assert np.allclose(forward, np.array([-1.0, 0.0, -3.0]) / math.sqrt(10))
    assert matrix[1, 1] > 0.99  # camera's +y stays up


# --- OBJ ------------------------------------------------------------------------------------


def parse_obj(path: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = {"v": [], "vt": [], "f": [], "ft": [], "mtllib": None, "usemtl": None}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] in ("v", "vt"):
            parsed[parts[0]].append([float(x) for x in parts[1:]])
        elif parts[0] == "f":
            corners = [c.split("/") for c in parts[1:]]
            assert len(corners) == 3 and all(len(c) == 2 for c in corners), line
            parsed["f"].append([int(c[0]) for c in corners])
            parsed["ft"].append([int(c[1]) for c in corners])
        elif parts[0] in ("mtllib", "usemtl"):
            parsed[parts[0]] = line.split(None, 1)[1]
    return parsed


def test_obj_parses_back_exactly(tmp_path: Path, recon: Reconstruction) -> None:
    path = export_obj(recon, tmp_path / "face.obj")
    obj = parse_obj(path)
    assert len(obj["v"]) == len(recon.vertices) and len(obj["vt"]) == len(recon.uvs)
    assert len(obj["f"]) == len(recon.faces)
    # OBJ has no morph targets: it holds the fitted face, float32 exactly
    assert np.array_equal(np.array(obj["v"], np.float32), recon.vertices)
    assert np.array_equal(np.array(obj["vt"], np.float32), recon.uvs)
    assert np.array_equal(np.array(obj["f"]) - 1, recon.faces)
    assert np.array_equal(np.array(obj["ft"]) - 1, recon.uv_faces)

    assert obj["mtllib"] == "face.mtl"
    mtl = (tmp_path / "face.mtl").read_text().splitlines()
    assert f"newmtl {obj['usemtl']}" in mtl
    texture_name = next(line.split(None, 1)[1] for line in mtl if line.startswith("map_Kd"))
    assert texture_name == "face.png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / texture_name)), recon.texture)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face.png"]


def test_obj_refuses_to_overwrite_without_force(tmp_path: Path, recon: Reconstruction) -> None:
    export_obj(recon, tmp_path / "face.obj")
    (tmp_path / "face.obj").write_text("old")
    with pytest.raises(OutputError, match="face.obj: already exists"):
        export_obj(recon, tmp_path / "face.obj")
    assert (tmp_path / "face.obj").read_text() == "old"
    export_obj(recon, tmp_path / "face.obj", force=True)
    assert len(parse_obj(tmp_path / "face.obj")["f"]) == len(recon.faces)
    with pytest.raises(OutputError, match=r"\.obj"):
        export_obj(recon, tmp_path / "face.stl")


def test_obj_in_the_result_folder_shares_the_texture(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out")
    obj = parse_obj(out / OBJ_FILE)
    assert obj["mtllib"] == MTL_FILE
    mtl = (out / MTL_FILE).read_text()
    assert f"map_Kd {TEXTURE_PNG}" in mtl
    assert not (out / "head.png").exists()


# --- glTF -----------------------------------------------------------------------------------

_COMPONENTS = {5126: "<f4", 5125: "<u4", 5123: "<u2"}
_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def parse_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Check the GLB container (header, chunk types, 4-byte padding) and return JSON and BIN."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    document = json.loads(data[20 : 20 + json_length].decode("utf-8"))
    offset = 20 + json_length
    bin_length, bin_type = struct.unpack_from("<II", data, offset)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    assert offset + 8 + bin_length == len(data)
    binary = data[offset + 8 : offset + 8 + bin_length]
    assert document["buffers"][0]["byteLength"] <= bin_length
    return document, binary


def _read_view(document: dict[str, Any], binary: bytes, view_index: int, dtype: np.dtype, count: int,
               offset: int = 0) -> np.ndarray:
    view = document["bufferViews"][view_index]
    start = view["byteOffset"] + offset
    assert start % 4 == 0 and view["byteOffset"] + view["byteLength"] <= document["buffers"][0]["byteLength"]
    assert count * dtype.itemsize <= view["byteLength"]
    return np.frombuffer(binary, dtype, count=count, offset=start)


def read_accessor(document: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    """Decode one accessor (dense, or sparse over zeros), checking bounds, alignment and
    (where given) min/max."""
    accessor = document["accessors"][index]
    dtype = np.dtype(_COMPONENTS[accessor["componentType"]])
    width = _WIDTHS[accessor["type"]]
    count = accessor["count"]
    if "bufferView" in accessor:
        array = _read_view(document, binary, accessor["bufferView"], dtype, count * width,
                           accessor.get("byteOffset", 0)).reshape(count, width)
    else:  # glTF: an accessor without a buffer view holds zeros
        array = np.zeros((count, width), dtype)
    if "sparse" in accessor:
        sparse = accessor["sparse"]
        # a sparse accessor's views are not vertex buffers
        assert all("target" not in document["bufferViews"][part["bufferView"]]
                   for part in (sparse["indices"], sparse["values"]))
        rows = _read_view(document, binary, sparse["indices"]["bufferView"],
                          np.dtype(_COMPONENTS[sparse["indices"]["componentType"]]), sparse["count"])
        assert sparse["count"] >= 1 and np.all(np.diff(rows.astype(np.int64)) > 0) and rows[-1] < count
        array = array.copy()
        array[rows] = _read_view(document, binary, sparse["values"]["bufferView"], dtype,
                                 sparse["count"] * width).reshape(-1, width)
    if "min" in accessor:
        assert (
            accessor["min"] == array.min(axis=0).tolist()
            and accessor["max"] == array.max(axis=0).tolist()
        )
    return array


@pytest.fixture
def glb(tmp_path: Path, recon: Reconstruction) -> tuple[Path, dict[str, Any], bytes]:
    path = export_glb(recon, tmp_path / "head.glb")
    document, binary = parse_glb(path.read_bytes())
    return path, document, binary


def test_glb_is_valid_and_holds_the_mesh(
    recon: Reconstruction, glb: tuple[Path, dict[str, Any], bytes]
) -> None:
    _path, document, binary = glb
    assert document["asset"]["version"] == "2.0"
    (mesh,) = document["meshes"]
    (primitive,) = mesh["primitives"]
    attributes = primitive["attributes"]
    for name in ("POSITION", "NORMAL", "TEXCOORD_0"):
        assert name in attributes
    position_accessor = document["accessors"][attributes["POSITION"]]
    assert "min" in position_accessor and "max" in position_accessor  # required by the spec

    vertex_index, uv_index, _ = split_uv_seams(recon.faces, recon.uv_faces)
    positions = read_accessor(document, binary, attributes["POSITION"])
    normals = read_accessor(document, binary, attributes["NORMAL"])
    texcoords = read_accessor(document, binary, attributes["TEXCOORD_0"])
    indices = read_accessor(document, binary, primitive["indices"]).reshape(-1, 3)
    count = len(vertex_index)
    assert len(positions) == len(normals) == len(texcoords) == count
    assert indices.max() < count and len(indices) == len(recon.faces)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)

    # the base shape is the neutral head; the triangles are the model's triangles
    assert np.array_equal(positions, recon.neutral_vertices[vertex_index])
    assert np.array_equal(positions[indices], recon.neutral_vertices[recon.faces])
    # glTF's v runs down: v_gltf = 1 - v
    assert np.allclose(texcoords[:, 0], recon.uvs[uv_index, 0])
    assert np.allclose(texcoords[:, 1], 1.0 - recon.uvs[uv_index, 1])

    # morph targets: names, fitted weights, and base + sum w * delta = the fitted face
    targets = primitive["targets"]
    assert len(targets) == len(recon.expression_names)
    assert mesh["extras"]["targetNames"] == recon.expression_names
    assert mesh["weights"] == [float(w) for w in recon.expression_weights]
    fitted = positions.astype(np.float64)
    neutral_normals = vertex_normals(recon.neutral_vertices, recon.faces)
    normal_deltas = morph_normal_deltas(recon.neutral_vertices, recon.expression_deltas, recon.faces,
                                        neutral_normals)
    for e, (weight, target) in enumerate(zip(mesh["weights"], targets, strict=True)):
        assert "min" in document["accessors"][target["POSITION"]]
        delta = read_accessor(document, binary, target["POSITION"])
        assert np.array_equal(delta, recon.expression_deltas[e][vertex_index])
        fitted += weight * delta
        normal = read_accessor(document, binary, target["NORMAL"])
        assert np.array_equal(normal, normal_deltas[e][vertex_index].astype(np.float32))
    assert np.allclose(fitted, recon.vertices[vertex_index], atol=1e-6)

    # the embedded texture is the UV texture, row 0 still v = 1 (= glTF v 0)
    image = document["images"][document["textures"][0]["source"]]
    view = document["bufferViews"][image["bufferView"]]
    png = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    assert image["mimeType"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), recon.texture)
    material = document["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0 and material["baseColorTexture"]["index"] == 0


def test_glb_camera_and_light(
    recon: Reconstruction, glb: tuple[Path, dict[str, Any], bytes]
) -> None:
    _path, document, _binary = glb
    nodes = {node["name"]: node for node in document["nodes"]}
    assert sorted(document["scenes"][0]["nodes"]) == [0, 1, 2]
    camera = document["cameras"][nodes["camera"]["camera"]]["perspective"]
    assert camera["yfov"] == pytest.approx(2 * math.atan(250 / (2 * 1.3 * 200)))
    assert camera["aspectRatio"] == pytest.approx(200 / 250)
    matrix = np.array(nodes["camera"]["matrix"]).reshape(4, 4).T  # glTF matrices are column-major
    assert np.allclose(matrix[:3, 3], recon.camera.position)
    forward = recon.camera.look_at - recon.camera.position
    assert np.allclose(matrix[:3, :3] @ [0, 0, -1], forward / np.linalg.norm(forward))

    assert "KHR_lights_punctual" in document["extensionsUsed"]
    assert "KHR_lights_punctual" not in document.get("extensionsRequired", [])
    light = document["extensions"]["KHR_lights_punctual"]["lights"][
        nodes["light"]["extensions"]["KHR_lights_punctual"]["light"]
    ]
    assert light["type"] == "point"
    assert np.allclose(np.array(light["color"]) * light["intensity"], recon.light.colour)
    assert nodes["light"]["translation"] == recon.light.position.tolist()
    assert document["scenes"][0]["extras"]["ganfit"]["ambient"] == recon.light.ambient.tolist()


def test_glb_loads_in_trimesh(
    recon: Reconstruction, glb: tuple[Path, dict[str, Any], bytes]
) -> None:
    trimesh = pytest.importorskip("trimesh")
    path, _document, _binary = glb
    mesh = trimesh.load(path, force="mesh", process=False)
    vertex_index, uv_index, faces = split_uv_seams(recon.faces, recon.uv_faces)
    assert len(mesh.vertices) == len(vertex_index) and len(mesh.faces) == len(recon.faces)
    assert np.allclose(mesh.vertices, recon.neutral_vertices[vertex_index])
    assert np.array_equal(mesh.faces, faces)
    # trimesh flips glTF's v back to v up: the convention round-trips
    assert np.allclose(mesh.visual.uv, recon.uvs[uv_index], atol=1e-6)


def test_glb_without_expressions(tmp_path: Path, recon: Reconstruction) -> None:
    bare = Reconstruction(
        **{
            **recon.__dict__,
            "vertices": recon.neutral_vertices,
            "expression_names": [],
            "expression_weights": np.zeros(0, np.float32),
            "expression_deltas": np.zeros((0, len(recon.vertices), 3), np.float32),
        }
    )
    document, _ = parse_glb(export_glb(bare, tmp_path / "bare.glb").read_bytes())
    assert (
        "targets" not in document["meshes"][0]["primitives"][0]
        and "weights" not in document["meshes"][0]
    )


def test_glb_stores_sparse_targets_sparsely(tmp_path: Path, recon: Reconstruction) -> None:
    """A target that moves few vertices is a sparse accessor, one that moves none has no data
    at all, a dense one stays dense; all decode to exactly the deltas."""
    deltas = recon.expression_deltas.copy()
    deltas[0, 3:] = 0  # moves 3 of the 24 vertices
    deltas[1] = 0  # moves nothing
    vertices = recon.neutral_vertices + np.einsum("e,evc->vc", recon.expression_weights, deltas)
    sparse = Reconstruction(**{**recon.__dict__, "expression_deltas": deltas, "vertices": vertices})
    document, binary = parse_glb(export_glb(sparse, tmp_path / "sparse.glb").read_bytes())
    targets = document["meshes"][0]["primitives"][0]["targets"]
    few, none, dense = (document["accessors"][target["POSITION"]] for target in targets)
    assert "sparse" in few and "bufferView" not in few
    assert "sparse" not in none and "bufferView" not in none
    assert "sparse" not in dense and "bufferView" in dense
    assert "sparse" in document["accessors"][targets[0]["NORMAL"]]
    vertex_index, _, _ = split_uv_seams(sparse.faces, sparse.uv_faces)
    normal_deltas = morph_normal_deltas(sparse.neutral_vertices, deltas, sparse.faces,
                                        vertex_normals(sparse.neutral_vertices, sparse.faces))
    for e, target in enumerate(targets):
        assert np.array_equal(read_accessor(document, binary, target["POSITION"]), deltas[e][vertex_index])
        assert np.array_equal(read_accessor(document, binary, target["NORMAL"]),
                              normal_deltas[e][vertex_index].astype(np.float32))


def test_glb_refuses_to_overwrite_without_force(tmp_path: Path, recon: Reconstruction) -> None:
    path = export_glb(recon, tmp_path / "head.glb")
    with pytest.raises(OutputError, match="already exists"):
        export_glb(recon, path)
    export_glb(recon, path, force=True)
    parse_glb(path.read_bytes())
    with pytest.raises(OutputError, match=r"\.glb"):
        export_glb(recon, tmp_path / "head.gltf")


def test_result_folder_glb_matches_standalone_export(tmp_path: Path, recon: Reconstruction) -> None:
    out = write_result(recon, tmp_path / "out")
    standalone = export_glb(recon, tmp_path / "standalone.glb")
    assert (out / GLB_FILE).read_bytes() == standalone.read_bytes()
