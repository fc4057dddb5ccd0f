"""Basel Face Model 2017 (statismo HDF5) -> the linear parts of a ``ShapeModel``.

What is read (the statismo layout the BFM 2017 and 2019 ``.h5`` files use):

- ``shape/representer/points`` (3, N) in millimetres: the vertex count (the reference mesh);
- ``shape/representer/cells`` (3, F): the triangles;
- ``shape/model/mean`` (3N,) mm, ordered x0 y0 z0 x1 ...; ``shape/model/pcaBasis`` (3N, K), the
  orthonormal principal directions; ``shape/model/pcaVariance`` (K,) in mm^2;
- ``expression/model/{mean,pcaBasis,pcaVariance}``, the same for expressions (optional). Its mean
  is a deformation, so it is added to the shape mean, as statismo-based tools combine the two.

Ignored: ``color/`` (per-vertex albedo: ganfit textures with UV maps), ``noiseVariance``,
``catalog``, ``metadata``. An instance is ``mean + U diag(sqrt(var)) a`` with ``a ~ N(0, I)``;
``ShapeModel`` wants offsets per unit coefficient plus the coefficient's prior std, so the basis
becomes ``U sqrt(var) / 1000`` (metres per standard deviation) and every prior std is 1. BFM is
y up with the face toward +z, like ganfit's model space, so no axes change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelDataError
from .limits import DeclaredSizeError, SizeBudget, check_declared
from .standard_3dmm import LinearParts, numbered_names

log = logging.getLogger(__name__)

BFM_HINT = (
    "use model2017-1_bfm_nomouth.h5 or model2017-1_face12_nomouth.h5 from the Basel Face Model "
    "download (see docs/shape-models.md)"
)
MM_TO_M = 1e-3


def read_bfm(path: Path, num_identity: int | None = None, num_expression: int | None = None) -> LinearParts:
    """Read a BFM 2017 ``.h5`` (only the leading ``num_identity``/``num_expression`` components if given)."""
    try:
        import h5py
    except ImportError:
        raise ModelDataError(
            f"Reading the BFM file {path} needs h5py: pip install 'ganfit[bfm]' (or pip install h5py)"
        ) from None
    budget = SizeBudget(path, "BFM", BFM_HINT)
    try:
        with h5py.File(path, "r") as f:
            return _read_groups(f, path, num_identity, num_expression, budget)
    except ModelDataError:
        raise
    except DeclaredSizeError as exc:
        raise budget.refuse(exc) from None
    except (OSError, KeyError, ValueError, TypeError) as exc:  # h5py reports bad/truncated files as OSError
        reason = " ".join(str(exc).split())[:120] or exc.__class__.__name__
        raise ModelDataError(f"BFM file {path} is not a readable HDF5 model ({reason}): {BFM_HINT}") from None


def _check_dataset(node: Any, key: str, budget: SizeBudget) -> None:
    """Count a dataset's declared size (and its chunk's: HDF5 allocates whole chunks to inflate
    them) before h5py reads it. Raises ``DeclaredSizeError``."""
    budget.check(key, node.shape, node.dtype)
    if node.chunks:
        check_declared(f"one chunk of {key}", node.chunks, node.dtype)


def _read_groups(
    f: Any, path: Path, num_identity: int | None, num_expression: int | None, budget: SizeBudget
) -> LinearParts:
    def fail(what: str) -> ModelDataError:
        return ModelDataError(f"BFM file {path} {what}: {BFM_HINT}")

    def dataset(key: str) -> Any:
        node = f.get(key)
        if node is None or not hasattr(node, "shape"):
            raise fail(f"lacks the dataset {key} (groups found: {', '.join(sorted(f.keys())) or 'none'})")
        _check_dataset(node, key, budget)
        return node

    points = np.asarray(dataset("shape/representer/points")[()])
    cells = np.asarray(dataset("shape/representer/cells")[()])
    vertices = _as_rows(points, 3)
    faces = _as_rows(cells, 3)
    if vertices is None:
        raise fail(f"has shape/representer/points of shape {points.shape}, expected (3, N)")
    if faces is None or faces.dtype.kind not in "iu":
        raise fail(f"has shape/representer/cells of shape {cells.shape} ({cells.dtype}), expected (3, F) integers")
    n = vertices.shape[0]

    mean, identity, id_count = _pca(f, "shape", n, num_identity, fail, budget, required=True)
    if "expression" in f:
        ex_mean, expression, ex_count = _pca(f, "expression", n, num_expression, fail, budget, required=False)
        mean = mean + ex_mean
    else:
        log.warning("%s has no expression model: the head will have no expression blendshapes", path.name)
        expression, ex_count = np.zeros((0, n, 3), np.float32), 0

    ignored = sorted(k for k in f.keys() if k not in ("shape", "expression"))
    extent = float(np.ptp(mean, axis=0).max()) * MM_TO_M
    if not 0.05 <= extent <= 1.0:
        log.warning("%s: the mean head is %.3f m across after mm -> m; is the file in millimetres?", path.name, extent)
    return LinearParts(
        source="BFM 2017",
        mean=(mean * MM_TO_M).astype(np.float32),
        identity_basis=identity,
        expression_basis=expression,
        faces=faces.astype(np.int64),
        identity_names=numbered_names("identity", id_count),
        expression_names=numbered_names("expression", ex_count),
        provenance={
            "format": "statismo HDF5 (BFM 2017 layout)",
            "units": "millimetres in the file, converted to metres",
            "basis": "pcaBasis * sqrt(pcaVariance) / 1000: one coefficient is one prior standard deviation",
            "expression_mean": "added to the shape mean" if ex_count else "none",
            "ignored": ignored + ["shape/model/noiseVariance"],
        },
    )


def _pca(
    f: Any, group: str, n: int, limit: int | None, fail: Any, budget: SizeBudget, required: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean (n, 3) in mm and basis (K, n, 3) in metres per std of one statismo model group."""
    keys = [f"{group}/model/{k}" for k in ("mean", "pcaBasis", "pcaVariance")]
    missing = [k for k in keys if not hasattr(f.get(k), "shape")]
    if missing:
        raise fail(f"lacks {', '.join(missing)}" + ("" if required else f" (or remove the {group} group)"))
    mean_ds, basis_ds, var_ds = (f[k] for k in keys)
    for key, node in zip(keys, (mean_ds, basis_ds, var_ds)):
        _check_dataset(node, key, budget)
    if mean_ds.shape != (3 * n,):
        raise fail(f"has {keys[0]} of shape {mean_ds.shape}, expected ({3 * n},) for {n} vertices")
    if len(basis_ds.shape) != 2 or basis_ds.shape[0] != 3 * n:
        raise fail(f"has {keys[1]} of shape {basis_ds.shape}, expected ({3 * n}, K)")
    k = basis_ds.shape[1] if limit is None else min(int(limit), basis_ds.shape[1])
    if var_ds.shape != (basis_ds.shape[1],):
        raise fail(f"has {keys[2]} of shape {var_ds.shape}, expected ({basis_ds.shape[1]},)")
    mean = np.asarray(mean_ds[()], dtype=np.float64)
    basis = np.asarray(basis_ds[:, :k], dtype=np.float32)
    variance = np.asarray(var_ds[:k], dtype=np.float64)
    if not (np.isfinite(mean).all() and np.isfinite(basis).all() and np.isfinite(variance).all()):
        raise fail(f"has NaN or infinite values in {group}/model")
    if (variance < 0).any():
        raise fail(f"has negative values in {keys[2]}")
    scale = (np.sqrt(variance) * MM_TO_M).astype(np.float32)
    per_std = np.ascontiguousarray((basis * scale[None, :]).T).reshape(k, n, 3)
    return mean.reshape(n, 3), per_std, k


def _as_rows(array: np.ndarray, width: int) -> np.ndarray | None:
    """(width, N) -> (N, width) as statismo stores it; (N, width) is accepted as is."""
    if array.ndim != 2:
        return None
    if array.shape[0] == width:
        return np.ascontiguousarray(array.T)
    if array.shape[1] == width:
        return array
    return None
