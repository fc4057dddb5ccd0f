"""FLAME (``generic_model.pkl`` or an ``.npz`` of the same arrays) -> linear parts of a ``ShapeModel``.

What is read: ``v_template`` (N, 3) in metres; ``shapedirs`` (N, 3, 300 + E), whose first 300
columns are identity ("shape") blendshapes and the rest expression blendshapes (E = 100 in FLAME
2020), both scaled so that each coefficient has prior std 1; ``f`` (F, 3). Optional
``identity_names``/``expression_names`` lists name the coefficients.

What is ignored: ``posedirs``, ``J_regressor``, ``J``, ``weights``, ``kintree_table``,
``bs_style``, ``bs_type``. FLAME moves the neck, jaw and eyeballs by rotating joints with linear
blend skinning, which is not linear in the pose, so only the template and the blendshapes are
kept: the head stays in FLAME's zero pose (mouth closed, eyes forward).

The ``.pkl`` is read with ``safe_pickle`` (no chumpy or scipy needed, nothing in the file runs).
FLAME is y up with the face toward +z, in metres, like ganfit's model space.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelDataError
from .limits import check_npz
from .safe_pickle import load_pickle_file, to_plain_array
from .standard_3dmm import LinearParts, numbered_names

log = logging.getLogger(__name__)

FLAME_HINT = (
    "use FLAME's generic_model.pkl (or an .npz of the same arrays) from flame.is.tue.mpg.de "
    "(see docs/shape-models.md)"
)
FLAME_SHAPE_COMPONENTS = 300  # shapedirs[..., :300] is identity in every FLAME release
_REQUIRED = ("v_template", "shapedirs", "f")
_KNOWN_IGNORED = ("posedirs", "J_regressor", "J", "weights", "kintree_table", "bs_style", "bs_type")


def read_flame(
    path: Path, kind: str, num_identity: int | None = None, num_expression: int | None = None
) -> LinearParts:
    """Read a FLAME model; ``kind`` is "pickle" or "npz" (the caller sniffed the file)."""
    data = _read_pickle(path) if kind == "pickle" else _read_npz(path)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        found = ", ".join(sorted(map(str, data))[:12]) or "nothing"
        raise ModelDataError(f"FLAME file {path} lacks {', '.join(missing)} (it holds {found}): {FLAME_HINT}")

    def array(key: str) -> np.ndarray:
        try:
            return to_plain_array(data[key])
        except ValueError as exc:
            raise ModelDataError(f"FLAME file {path}: {key} {exc}: {FLAME_HINT}") from None

    template, dirs, faces = array("v_template"), array("shapedirs"), array("f")
    if template.ndim != 2 or template.shape[1] != 3:
        raise ModelDataError(
            f"FLAME file {path} has v_template of shape {template.shape}, expected (N, 3): {FLAME_HINT}"
        )
    n = template.shape[0]
    if dirs.ndim != 3 or dirs.shape[:2] != (n, 3):
        raise ModelDataError(
            f"FLAME file {path} has shapedirs of shape {dirs.shape}, expected ({n}, 3, K): {FLAME_HINT}"
        )
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise ModelDataError(
            f"FLAME file {path} has f of shape {faces.shape} ({faces.dtype}), expected (F, 3) integers: {FLAME_HINT}"
        )
    if not (np.isfinite(template).all() and np.isfinite(dirs).all()):
        raise ModelDataError(f"FLAME file {path} has NaN or infinite values in v_template or shapedirs: {FLAME_HINT}")

    total = dirs.shape[2]
    split = min(FLAME_SHAPE_COMPONENTS, total)
    if total <= FLAME_SHAPE_COMPONENTS:
        log.warning("%s: shapedirs has %d columns, all identity: no expression blendshapes", path.name, total)
    ki = split if num_identity is None else min(int(num_identity), split)
    ke = total - split if num_expression is None else min(int(num_expression), total - split)
    # (N, 3, K) -> (K, N, 3): one coefficient's offsets per row, as ShapeModel stores bases.
    identity = np.ascontiguousarray(np.moveaxis(dirs[:, :, :ki], 2, 0), dtype=np.float32)
    expression = np.ascontiguousarray(np.moveaxis(dirs[:, :, split : split + ke], 2, 0), dtype=np.float32)
    ignored = sorted(str(k) for k in data if k not in _REQUIRED and k not in ("identity_names", "expression_names"))
    unexpected = [k for k in ignored if k not in _KNOWN_IGNORED]
    if unexpected:
        log.info("%s: ignoring unexpected keys %s", path.name, ", ".join(unexpected))
    return LinearParts(
        source="FLAME",
        mean=template.astype(np.float32),
        identity_basis=identity,
        expression_basis=expression,
        faces=faces.astype(np.int64),
        identity_names=_names(data.get("identity_names"), ki, "identity", path),
        expression_names=_names(data.get("expression_names"), ke, "expression", path),
        provenance={
            "format": "FLAME pickle" if kind == "pickle" else "FLAME npz",
            "units": "metres",
            "basis": f"shapedirs[..., :{split}] identity, [..., {split}:] expression; prior std 1",
            "kept": "template and linear blendshapes only: neck/jaw/eyeball joints (linear blend skinning) dropped",
            "ignored": ignored,
        },
    )


def _read_pickle(path: Path) -> dict[str, Any]:
    data = load_pickle_file(path, "FLAME model", FLAME_HINT)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ModelDataError(f"FLAME file {path} holds a {kind}, not FLAME's dict of arrays: {FLAME_HINT}")
    return {str(k): v for k, v in data.items()}


def _read_npz(path: Path) -> dict[str, Any]:
    check_npz(path, "FLAME", FLAME_HINT)  # empty, damaged or oversized: refused before numpy reads it
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ModelDataError(
                f"FLAME file {path} stores pickled Python objects inside the npz, which ganfit does not load: "
                f"re-save it with plain numeric arrays, or use FLAME's generic_model.pkl"
            ) from None
        raise ModelDataError(f"FLAME file {path} is not a readable npz ({exc}): {FLAME_HINT}") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError on a truncated archive
        reason = exc.__class__.__name__
        raise ModelDataError(f"FLAME file {path} is not a readable npz ({reason}): {FLAME_HINT}") from None


def _names(raw: Any, count: int, prefix: str, path: Path) -> list[str]:
    """Names stored in the file (first ``count``), else ``prefix_000``..."""
    if raw is None:
        return numbered_names(prefix, count)
    names = [str(x) for x in np.asarray(raw).reshape(-1)]
    if len(names) < count or len(set(names[:count])) != count:
        raise ModelDataError(
            f"FLAME file {path} has {len(names)} {prefix}_names (or repeats), fewer than its {count} "
            f"{prefix} components: fix or remove {prefix}_names"
        )
    return names[:count]
