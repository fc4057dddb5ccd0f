"""Standard 3DMMs (BFM 2017, FLAME) as ``ShapeModel``s, loaded from the user's own files.

Neither model can ship with ganfit (both need a licence and a download), so ``load_shape_model``
reads them where the user points. Each reader (``bfm.py``, ``flame.py``) returns the linear part
of its model as ``LinearParts`` in ganfit's units; this module adds what the files lack:

- landmarks: the 68 iBUG vertex indices the landmark stage fits, from a JSON file or a
  barycentric embedding (FLAME/DECA style), snapped to vertices;
- UVs: from a UV file when given, else a cylindrical projection (``cylindrical_uvs``), enough to
  bake and render a texture;
- winding: faces are turned to wind counter-clockwise seen from outside when most wind the other
  way, because the renderer culls back faces.
See docs/shape-models.md for the user-facing description.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelDataError
from .limits import (
    DeclaredSizeError,
    SizeBudget,
    check_file_size,
    check_npy,
    check_npz,
    read_npy_header,
    text_limit,
)
from .safe_pickle import (
    PICKLE_SUFFIXES,
    PickleRefused,
    is_pickle,
    load_pickle_file,
    load_restricted,
    to_plain_array,
)
from .shape_model import DEFAULT_MODEL_FILE, REBUILD_HINT, ShapeModel, load_default_shape_model

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68  # the iBUG-68 scheme dlib detects
PRIOR_RANGE = 3.0  # PCA coefficients are in prior stds: the valid range is +-3 of them
DOCS = "docs/shape-models.md"
LANDMARK_FORMAT = (
    'a landmark file is a JSON {"indices": [68 vertex indices in iBUG-68 order]} or a 68-point '
    f"barycentric embedding (see {DOCS})"
)
LANDMARKS_HINT = f"pass one with --landmarks FILE (in Python: landmarks_path); {LANDMARK_FORMAT}"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
# Barycentric landmark embeddings, best first: DECA's 68-point set, FLAME's (static, 51 points).
_EMBEDDING_KEYS = (
    ("full_lmk_faces_idx", "full_lmk_bary_coords"),
    ("lmk_face_idx", "lmk_b_coords"),
    ("static_lmk_faces_idx", "static_lmk_bary_coords"),
)


@dataclass
class LinearParts:
    """The linear part of a standard 3DMM, already in ShapeModel units.

    Metres, y up, face toward +z; bases hold vertex offsets per prior standard deviation, so every
    coefficient's prior std is 1. ``uvs``/``uv_faces`` are None when the file has none.
    """

    source: str  # "BFM 2017", "FLAME"
    mean: np.ndarray  # (V, 3) float32
    identity_basis: np.ndarray  # (Ki, V, 3) float32
    expression_basis: np.ndarray  # (Ke, V, 3) float32
    faces: np.ndarray  # (F, 3) int64
    identity_names: list[str]
    expression_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    uvs: np.ndarray | None = None  # (T, 2), v up
    uv_faces: np.ndarray | None = None  # (F, 3)


def numbered_names(prefix: str, count: int) -> list[str]:
    """``prefix_000``, ``prefix_001``, ...: names for unnamed PCA components."""
    return [f"{prefix}_{i:03d}" for i in range(count)]


def sniff_format(path: Path) -> str:
    """What a file is by its first bytes: "hdf5", "npz", "npy", "pickle" or "unknown"."""
    with path.open("rb") as stream:
        head = stream.read(8)
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if is_pickle(head):
        return "pickle"
    return "unknown"


def load_shape_model(
    path: str | Path | None,
    landmarks_path: str | Path | None = None,
    *,
    uv_path: str | Path | None = None,
    num_identity: int | None = None,
    num_expression: int | None = None,
    require_landmarks: bool = True,
) -> ShapeModel:
    """Load a shape model from a file the user points at; the file's content decides how.

    Accepts:

    - ``None``: the default anny head that ships with ganfit;
    - a ganfit ``.npz`` (the format of ``anny_head.npz``, key ``identity_basis``): loaded as is,
      landmarks from ``landmarks_path`` or ``<stem>_landmarks.json`` beside it;
    - a Basel Face Model 2017 (or 2019) statismo ``.h5`` (needs h5py: ``pip install ganfit[bfm]``);
    - a FLAME model: ``generic_model.pkl`` (read without running pickled code and without chumpy
      or scipy) or an ``.npz`` with the same keys (``v_template``, ``shapedirs``, ``f``).

    BFM and FLAME carry no iBUG-68 landmark vertices, so ``landmarks_path`` is required for them
    (unless ``require_landmarks`` is False, e.g. to only render the model). It may be a JSON file
    ``{"indices": [68 vertex indices]}`` (the format of ``anny_head_landmarks.json``) or a 68-point
    barycentric embedding (``.pkl``/``.npz``/``.npy`` with ``lmk_face_idx`` + ``lmk_b_coords``,
    or DECA's ``full_lmk_faces_idx`` + ``full_lmk_bary_coords``), snapped to the nearest vertices.
    ``uv_path`` (an ``.obj`` with the model's triangles, or an ``.npz`` with ``vt``/``ft``) gives
    UVs; without it a cylindrical projection is used. ``num_identity``/``num_expression`` keep
    only the leading PCA components. BFM/FLAME coefficients are in prior standard deviations
    (``identity_std`` = ``expression_std`` = 1, expression range +-3). FLAME keeps only its linear
    parts (template and blendshapes; no jaw/neck/eyeball joints).

    Every problem with a file raises ``ModelDataError`` (a ``GanfitError``), one line saying what
    is wrong and what to do.
    """
    if path is None:
        if landmarks_path is None and uv_path is None:
            return load_default_shape_model()
        path = DEFAULT_MODEL_FILE
    path = Path(path)
    if not path.is_file():
        raise ModelDataError(
            f"Shape model file {path} does not exist: give the path of a BFM 2017 .h5, a FLAME .pkl/.npz "
            f"or a ganfit .npz (see {DOCS})"
        )
    kind = _sniff_or_fail(path)
    npz_keys = _npz_keys(path) if kind == "npz" else []
    if "identity_basis" in npz_keys:  # ganfit's own format
        if uv_path is not None or num_identity is not None or num_expression is not None:
            raise ModelDataError(
                f"{path} is a ganfit model: uv_path/num_identity/num_expression apply to BFM and FLAME files only"
            )
        return ShapeModel.from_npz(path, None if landmarks_path is None else Path(landmarks_path))
    source = {"hdf5": "BFM 2017", "pickle": "FLAME", "npz": "FLAME" if "v_template" in npz_keys else None}.get(kind)
    if source is not None and landmarks_path is None and require_landmarks:  # say so before a long read
        raise ModelDataError(f"{source} model {path.name} has no 68-point landmark vertices: {LANDMARKS_HINT}")
    if kind == "hdf5":
        from .bfm import read_bfm

        parts = read_bfm(path, num_identity, num_expression)
    elif kind in ("pickle", "npz"):
        from .flame import read_flame

        parts = read_flame(path, kind, num_identity, num_expression)
    else:
        raise ModelDataError(
            f"Shape model file {path} is neither HDF5 (BFM 2017 .h5), a pickle (FLAME .pkl) nor an npz: "
            f"check the path, or re-download the model (see {DOCS})"
        )
    return build_standard_model(
        parts, path, None if landmarks_path is None else Path(landmarks_path),
        None if uv_path is None else Path(uv_path), require_landmarks,
    )


def build_standard_model(
    parts: LinearParts,
    path: Path,
    landmarks_path: Path | None,
    uv_path: Path | None,
    require_landmarks: bool = True,
) -> ShapeModel:
    """A ShapeModel from a reader's parts plus landmarks, UVs and outward winding."""
    _check_parts(parts, path)
    faces = parts.faces
    if uv_path is not None:
        uvs, uv_faces = read_uv_file(uv_path, faces, parts.mean.shape[0])
        uv_note = f"from {uv_path.name}"
    elif parts.uvs is not None and parts.uv_faces is not None:
        uvs, uv_faces, uv_note = parts.uvs, parts.uv_faces, "from the model file"
    else:
        uvs, uv_faces = cylindrical_uvs(parts.mean, faces)
        uv_note = "cylindrical projection around the vertical axis (the file has none)"

    if landmarks_path is not None:
        landmarks = read_landmarks(landmarks_path, parts.mean, faces)  # before any re-winding
    elif require_landmarks:
        raise ModelDataError(
            f"{parts.source} model {path.name} has no 68-point landmark vertices: {LANDMARKS_HINT}"
        )
    else:
        landmarks = np.zeros(0, dtype=np.int64)

    flipped = not faces_point_outward(parts.mean, faces)
    if flipped:
        log.info("%s: most faces wind clockwise seen from outside; reversing them (back-face culling)", path.name)
        faces, uv_faces = faces[:, [0, 2, 1]], uv_faces[:, [0, 2, 1]]

    ke = parts.expression_basis.shape[0]
    provenance = {
        **parts.provenance,
        "source": parts.source,
        "file": path.name,
        "uvs": uv_note,
        "landmarks": landmarks_path.name if landmarks_path is not None else "none",
        "faces_reversed": flipped,
    }
    try:
        return ShapeModel(
            mean=parts.mean,
            identity_basis=parts.identity_basis,
            expression_basis=parts.expression_basis,
            faces=faces,
            uvs=uvs,
            uv_faces=uv_faces,
            landmark_indices=landmarks,
            identity_std=np.ones(parts.identity_basis.shape[0], np.float32),
            expression_std=np.ones(ke, np.float32),
            identity_names=parts.identity_names,
            expression_names=parts.expression_names,
            name=f"{parts.source.split()[0].lower()}:{path.stem}",
            provenance=provenance,
            expression_min=np.full(ke, -PRIOR_RANGE, np.float32),
            expression_max=np.full(ke, PRIOR_RANGE, np.float32),
        )
    except ModelDataError as exc:  # _check_parts should have caught it; keep the message actionable
        message = str(exc).replace(REBUILD_HINT, f"check the file (see {DOCS})")
        raise ModelDataError(f"{path}: {message}") from None


def _check_parts(parts: LinearParts, path: Path) -> None:
    """Errors a user can act on, before ShapeModel's own consistency checks."""
    n = parts.mean.shape[0]
    faces = parts.faces
    if len(faces) == 0:
        raise ModelDataError(f"{parts.source} file {path} has no triangles: check the file (see {DOCS})")
    if int(faces.min()) < 0 or int(faces.max()) >= n:
        raise ModelDataError(
            f"{parts.source} file {path} has triangles indexing vertex {int(faces.max())} (or negative) "
            f"but only {n} vertices: check the file (see {DOCS})"
        )
    if n < 3:
        raise ModelDataError(f"{parts.source} file {path} has {n} vertices: check the file (see {DOCS})")


def _sniff_or_fail(path: Path) -> str:
    try:
        kind = sniff_format(path)
    except OSError as exc:
        raise ModelDataError(f"Shape model file {path} cannot be opened ({exc.strerror or exc})") from None
    if kind == "unknown" and path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"  # protocol 0/1 pickles have no magic number; the restricted reader decides
    return kind


def _npz_keys(path: Path) -> list[str]:
    """The array names of an npz, after its declared sizes passed ``limits``."""
    return check_npz(path, "Shape model", f"re-download or re-save it (see {DOCS})")


# ---- landmarks -------------------------------------------------------------------------------
def read_landmarks(path: Path, mean: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """68 unique vertex indices from a landmark file (JSON indices or a barycentric embedding)."""
    if not path.is_file():
        raise ModelDataError(f"Landmark file {path} does not exist: {LANDMARK_FORMAT}")
    kind = "json" if path.suffix.lower() == ".json" else _sniff_or_fail(path)
    if kind == "json":
        indices = _landmark_json(path)
    else:
        data = _landmark_container(path, kind)
        indices = _landmarks_from(data, path, mean, faces)
    if indices.shape != (NUM_LANDMARKS,):
        raise ModelDataError(
            f"Landmark file {path} has {indices.size} landmarks, not {NUM_LANDMARKS}: {LANDMARK_FORMAT}"
        )
    n = mean.shape[0]
    if int(indices.min()) < 0 or int(indices.max()) >= n:
        raise ModelDataError(
            f"Landmark file {path} indexes vertex {int(indices.max())} (or negative) but the model has {n} "
            f"vertices: is it for this model? {LANDMARK_FORMAT}"
        )
    if len(np.unique(indices)) != NUM_LANDMARKS:
        raise ModelDataError(f"Landmark file {path} repeats vertex indices: each landmark needs its own vertex")
    return indices


def _landmark_json(path: Path) -> np.ndarray:
    check_file_size(path, "Landmark", LANDMARK_FORMAT, limit=text_limit())
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))["indices"]
        indices = np.asarray(raw, dtype=np.int64)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ModelDataError(
            f"Landmark file {path} is not a JSON object with an integer list 'indices' "
            f"({exc.__class__.__name__}): {LANDMARK_FORMAT}"
        ) from None
    if indices.ndim != 1 or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        raise ModelDataError(f"Landmark file {path}: 'indices' must be a flat list of integers: {LANDMARK_FORMAT}")
    return indices


def _landmark_container(path: Path, kind: str) -> dict[str, Any]:
    """The dict of arrays in a barycentric landmark file (.pkl, .npz, or an .npy holding a dict)."""
    what = "Landmark"
    if kind == "pickle":
        data = load_pickle_file(path, what, LANDMARK_FORMAT)
    elif kind == "npz":
        check_npz(path, what, LANDMARK_FORMAT)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:
            reason = exc.__class__.__name__
            raise ModelDataError(f"Landmark file {path} is not a readable npz ({reason}): {LANDMARK_FORMAT}") from None
    elif kind == "npy":
        data = _read_npy(path)
    else:
        raise ModelDataError(f"Landmark file {path} is neither JSON, a pickle, an npz nor an npy: {LANDMARK_FORMAT}")
    if isinstance(data, np.ndarray) and data.dtype.hasobject and data.size == 1:
        data = data.reshape(()).item()  # np.save of a dict: a 0-d object array
    if isinstance(data, np.ndarray) and data.dtype.kind in "iu":
        return {"indices": data}
    if not isinstance(data, dict):
        kind_name = type(data).__name__
        raise ModelDataError(f"Landmark file {path} holds a {kind_name}, not a dict of arrays: {LANDMARK_FORMAT}")
    return {str(k): v for k, v in data.items()}


def _read_npy(path: Path) -> Any:
    """An .npy; object arrays (``np.save`` of a dict, as DECA's embedding) go through safe_pickle."""
    check_npy(path, "Landmark", LANDMARK_FORMAT)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise ModelDataError(f"Landmark file {path} is not a readable npy ({exc}): {LANDMARK_FORMAT}") from None
    except Exception as exc:
        reason = exc.__class__.__name__
        raise ModelDataError(f"Landmark file {path} is not a readable npy ({reason}): {LANDMARK_FORMAT}") from None
    budget = SizeBudget(path, "Landmark", LANDMARK_FORMAT)
    try:
        with path.open("rb") as stream:
            read_npy_header(stream)
            return load_restricted(stream, budget)
    except DeclaredSizeError as exc:
        raise budget.refuse(exc) from None
    except PickleRefused as exc:
        raise ModelDataError(
            f"Landmark file {path} was refused: it asks to run {exc.module}.{exc.name}, which a landmark file "
            f"never needs; {LANDMARK_FORMAT}"
        ) from None
    except Exception as exc:  # EOFError, UnpicklingError, ValueError from a broken file
        reason = f"{exc.__class__.__name__}: {str(exc)[:80]}"
        raise ModelDataError(f"Landmark file {path} could not be read safely ({reason}): {LANDMARK_FORMAT}") from None


def _landmarks_from(data: dict[str, Any], path: Path, mean: np.ndarray, faces: np.ndarray) -> np.ndarray:
    if "indices" in data:
        try:
            return to_plain_array(data["indices"]).astype(np.int64).reshape(-1)
        except ValueError as exc:
            raise ModelDataError(f"Landmark file {path}: indices {exc}: {LANDMARK_FORMAT}") from None
    for face_key, bary_key in _EMBEDDING_KEYS:
        if face_key in data and bary_key in data:
            try:
                face_idx = to_plain_array(data[face_key]).astype(np.int64).reshape(-1)
                bary = to_plain_array(data[bary_key]).astype(np.float64).reshape(-1, 3)
            except ValueError as exc:
                raise ModelDataError(
                    f"Landmark file {path}: {face_key}/{bary_key} {exc}: {LANDMARK_FORMAT}"
                ) from None
            if face_idx.size == 51:
                raise ModelDataError(
                    f"Landmark file {path} holds 51 landmarks (FLAME's static embedding has no jaw line): "
                    f"{LANDMARK_FORMAT}"
                )
            if bary.shape[0] != face_idx.size or face_idx.size == 0:
                raise ModelDataError(
                    f"Landmark file {path}: {face_key} and {bary_key} differ in length: {LANDMARK_FORMAT}"
                )
            if int(face_idx.min()) < 0 or int(face_idx.max()) >= len(faces) or not np.isfinite(bary).all():
                raise ModelDataError(
                    f"Landmark file {path} names triangles outside the model's {len(faces)} (or NaN weights): "
                    f"is it for this model? {LANDMARK_FORMAT}"
                )
            return snap_embedding(mean, faces, face_idx, bary)
    raise ModelDataError(
        f"Landmark file {path} has none of the keys indices, lmk_face_idx + lmk_b_coords, "
        f"full_lmk_faces_idx + full_lmk_bary_coords: {LANDMARK_FORMAT}"
    )


def snap_embedding(mean: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Vertex indices for barycentric landmarks: the corner nearest each point on the mean mesh.

    Landmarks must be distinct vertices, so when two land on the same corner (the inner lips of a
    closed mouth) the later one takes its next nearest free corner, or the nearest free vertex.
    """
    corners = faces[face_idx]  # (L, 3)
    points = np.einsum("lk,lkd->ld", bary, mean[corners].astype(np.float64))
    used: set[int] = set()
    chosen: list[int] = []
    for point, tri in zip(points, corners):
        order = tri[np.argsort(np.linalg.norm(mean[tri] - point, axis=1), kind="stable")]
        pick = next((int(v) for v in order if int(v) not in used), None)
        if pick is None:
            by_distance = np.argsort(np.linalg.norm(mean - point, axis=1), kind="stable")
            pick = next(int(v) for v in by_distance if int(v) not in used)
        used.add(pick)
        chosen.append(pick)
    return np.asarray(chosen, dtype=np.int64)


# ---- UVs -------------------------------------------------------------------------------------
def cylindrical_uvs(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UVs for a model without any: angle around a vertical (y) axis gives u, height gives v.

    The axis goes through the centre of the sphere that best fits the vertices, which lies behind
    an open face mask and inside a full head. The cut goes through the widest empty sector around
    the axis (behind a mask), or straight behind the head when there is none; u runs from the
    subject's right to left across the face. Triangles that straddle the cut get copies of their
    corners on the far side, and corners on the axis itself (a pole) take the mean angle of their
    triangle's other corners, so no triangle stretches across the map. Both axes are scaled to
    fill [0, 1]; v is up.
    """
    v = np.asarray(vertices, dtype=np.float64)
    centre = _axis_centre(v)
    dx, dz = v[:, 0] - centre[0], v[:, 2] - centre[2]
    angle = np.arctan2(dx, dz)  # 0 toward +z (the face)
    radius = np.hypot(dx, dz)
    on_axis = radius < 0.02 * radius.max()
    turn = np.mod(angle - _cut_angle(angle[~on_axis] if (~on_axis).any() else angle), 2 * np.pi)

    corner = turn[faces]  # (F, 3)
    pole = on_axis[faces]
    far = np.where(pole, np.nan, corner)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-pole triangles: nan spans, left alone
        straddle = (np.nanmax(far, axis=1) - np.nanmin(far, axis=1)) > np.pi
        corner = np.where(straddle[:, None] & (corner < np.pi) & ~pole, corner + 2 * np.pi, corner)
        far = np.where(pole, np.nan, corner)
        fill = np.nanmean(far, axis=1)
    corner = np.where(pole & np.isfinite(fill)[:, None], fill[:, None], corner)

    # One UV per vertex, plus one per (vertex, angle) that a triangle needs differently.
    differs = corner != turn[faces]
    pairs = np.stack([faces[differs].astype(np.float64), corner[differs]], axis=1)
    extra, inverse = np.unique(pairs, axis=0, return_inverse=True)
    uv_faces = faces.copy()
    uv_faces[differs] = len(v) + inverse.reshape(-1)
    extra_vertex = extra[:, 0].astype(np.int64)
    u = np.concatenate([turn, extra[:, 1]])
    height = np.concatenate([v[:, 1], v[extra_vertex, 1]])
    used = np.unique(uv_faces)
    uvs = np.stack([_unit(u, used), _unit(height, used)], axis=1)
    return np.clip(uvs, 0.0, 1.0).astype(np.float32), uv_faces.astype(np.int64)


def _axis_centre(v: np.ndarray) -> np.ndarray:
    """Centre of the least-squares sphere through the vertices (bounding-box centre if degenerate)."""
    box = (v.min(0) + v.max(0)) / 2
    extent = float(np.ptp(v, axis=0).max()) or 1.0
    system = np.concatenate([2 * v, np.ones((len(v), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(system, (v**2).sum(1), rcond=None)
    centre = solution[:3]
    if not np.isfinite(centre).all() or np.linalg.norm(centre - box) > 2 * extent:
        return box  # a flat or straight patch: no sensible sphere
    return centre


def _cut_angle(angle: np.ndarray) -> float:
    """Where to cut the cylinder: the middle of the widest empty sector if wider than 90 degrees
    (the open back of a face mask), else straight behind the head (-z)."""
    ordered = np.sort(angle)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 2 * np.pi]))
    widest = int(np.argmax(gaps))
    if gaps[widest] > np.pi / 2:
        return float(ordered[widest] + gaps[widest] / 2)
    return float(np.pi)


def _unit(x: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Scale so the entries in ``used`` span [0, 1]."""
    low, high = float(x[used].min()), float(x[used].max())
    return (x - low) / (high - low if high > low else 1.0)


def read_uv_file(path: Path, faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """UVs (T, 2) and UV faces (F, 3) from an .obj with the model's triangles or an .npz (vt, ft)."""
    if not path.is_file():
        raise ModelDataError(
            f"UV file {path} does not exist: give an .obj with the model's triangles or an .npz with vt and ft"
        )
    if path.suffix.lower() == ".obj":
        uvs, uv_faces = _obj_uvs(path, faces, num_vertices)
    else:
        check_npz(path, "UV", f"give an .obj with the model's triangles or an .npz with vt and ft (see {DOCS})")
        try:
            with np.load(path, allow_pickle=False) as npz:
                pairs = (("vt", "ft"), ("uvs", "uv_faces"))
                keys = next(((a, b) for a, b in pairs if a in npz.files and b in npz.files), None)
                if keys is None:
                    raise ModelDataError(f"UV file {path} has no vt/ft (or uvs/uv_faces) arrays: see {DOCS}")
                uvs, uv_faces = np.asarray(npz[keys[0]], np.float64), np.asarray(npz[keys[1]], np.int64)
        except ModelDataError:
            raise
        except Exception as exc:
            reason = exc.__class__.__name__
            raise ModelDataError(f"UV file {path} is not a readable .obj or .npz ({reason}): see {DOCS}") from None
    if uvs.ndim != 2 or uvs.shape[1] != 2 or not np.isfinite(uvs).all():
        raise ModelDataError(f"UV file {path} has UVs of shape {uvs.shape} (or NaN), expected (T, 2): see {DOCS}")
    if uv_faces.shape != faces.shape:
        raise ModelDataError(
            f"UV file {path} has {len(uv_faces)} UV triangles, the model {len(faces)}: "
            f"is it for this model? see {DOCS}"
        )
    if int(uv_faces.min()) < 0 or int(uv_faces.max()) >= len(uvs):
        raise ModelDataError(f"UV file {path} has UV triangles indexing past its {len(uvs)} UVs: see {DOCS}")
    if uvs.min() < 0 or uvs.max() > 1:
        log.warning("%s: UVs reach outside [0, 1]; texture lookups there clamp to the edge", path.name)
    return uvs.astype(np.float32), uv_faces


def _obj_uvs(path: Path, faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates of a Wavefront OBJ whose triangles must be the model's, in order."""
    check_file_size(path, "UV", f"give an .obj with the model's triangles or an .npz with vt and ft (see {DOCS})",
                    limit=text_limit())
    n_v, vts, tris, uv_tris = 0, [], [], []
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                n_v += 1
            elif parts[0] == "vt":
                vts.append((float(parts[1]), float(parts[2])))
            elif parts[0] == "f":
                corners = [p.split("/") for p in parts[1:]]
                if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                    raise ValueError("faces must be triangles with texture indices (f v/vt v/vt v/vt)")
                tris.append([_obj_index(c[0], n_v) for c in corners])
                uv_tris.append([_obj_index(c[1], len(vts)) for c in corners])
    except (ValueError, IndexError) as exc:
        raise ModelDataError(f"UV file {path} is not an OBJ this reader understands ({exc}): see {DOCS}") from None
    if n_v != num_vertices or not np.array_equal(np.asarray(tris, np.int64).reshape(-1, 3), faces):
        raise ModelDataError(
            f"UV file {path} has {n_v} vertices and {len(tris)} triangles that are not the model's "
            f"({num_vertices} vertices, {len(faces)} triangles in the same order): is it for this model?"
        )
    return np.asarray(vts, np.float64).reshape(-1, 2), np.asarray(uv_tris, np.int64).reshape(-1, 3)


def _obj_index(token: str, count: int) -> int:
    i = int(token)
    return i - 1 if i > 0 else count + i


# ---- winding ---------------------------------------------------------------------------------
def faces_point_outward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """True when the faces (area-weighted) wind counter-clockwise seen from outside.

    "Outside" is away from the vertex centroid, which lies behind an open face mask and inside a
    closed head; for a closed mesh the sum is six times its signed volume.
    """
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    normals = np.cross(b - a, c - a)
    centres = (a + b + c) / 3 - v.mean(0)
    return float(np.einsum("ij,ij->", normals, centres)) >= 0
