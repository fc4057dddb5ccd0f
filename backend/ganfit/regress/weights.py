"""The regressor's shipped weights: one ``.npz`` of float32 arrays and the encoder's configuration,
with a provenance file beside it (``regressor.json``: data and licence, training configuration,
steps, hardware, figures).

``.npz`` rather than a torch checkpoint because it loads without unpickling anything and its
sizes are checked before reading (``models.limits``), as every other model file the engine reads.
``ganfit train-regressor --export`` writes both files from a training run's last checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GanfitError, ModelDataError
from ..io.atomic import atomic_file, atomic_savez
from ..models.limits import check_npz
from ..models.shape_model import ShapeModel
from ..protocol import REGRESSOR_LICENCE
from .encoder import EncoderConfig, RegressionEncoder

log = logging.getLogger(__name__)

__all__ = ["SHIPPED_REGRESSOR", "load_regressor", "regressor_provenance", "save_regressor"]

SHIPPED_REGRESSOR = Path(__file__).resolve().parents[1] / "models" / "data" / "regressor.npz"
#: The data the shipped weights were trained on, and so their terms (defined in the seam, so the
#: add-on's Mode menu shows the same words).
LICENCE = REGRESSOR_LICENCE
_HINT = "reinstall ganfit, or export a training run with `ganfit train-regressor --out RUN --export FILE`"
_PREFIX = "state/"


def save_regressor(encoder: RegressionEncoder, model: ShapeModel, target: Path, provenance: dict[str, Any]) -> None:
    """Write ``target`` (weights) and ``target.with_suffix('.json')`` (provenance), each atomically."""
    arrays = {_PREFIX + k: v.detach().cpu().float().numpy() for k, v in encoder.state_dict().items()}
    arrays["config"] = np.array(json.dumps(encoder.config.to_dict()))
    arrays["shape_model"] = np.array(json.dumps({"name": model.name, "identity": int(model.num_identity),
                                                 "expression": int(model.num_expression)}))
    atomic_savez(target, arrays, compressed=True)
    with atomic_file(target.with_suffix(".json"), force=True) as tmp:
        Path(tmp).write_text(json.dumps({**provenance, "weights": target.name}, indent=1) + "\n")


def load_regressor(model: ShapeModel, path: str | Path | None = None,
                   device: torch.device | str = "cpu") -> RegressionEncoder:
    """The encoder for ``model`` from ``path`` (default: the shipped weights), in eval mode."""
    file = Path(path) if path is not None else SHIPPED_REGRESSOR
    if not file.is_file():
        raise ModelDataError(f"regressor weights {file} not found: {_HINT}; or use --mode ganfit")
    check_npz(file, "Regressor", _HINT)
    try:
        with np.load(file, allow_pickle=False) as data:
            config = EncoderConfig.from_dict(json.loads(str(data["config"])))
            trained_for = json.loads(str(data["shape_model"]))
            state = {k[len(_PREFIX):]: torch.from_numpy(np.array(data[k])) for k in data.files if k.startswith(_PREFIX)}
    except (KeyError, ValueError, OSError) as exc:
        raise ModelDataError(f"regressor weights {file} cannot be read ({exc}): {_HINT}") from None
    wanted = {"identity": int(model.num_identity), "expression": int(model.num_expression)}
    if any(trained_for.get(k) != v for k, v in wanted.items()):
        raise GanfitError(f"the regressor was trained for the head model {trained_for.get('name')!r}, not "
                          f"{model.name!r}: use --mode ganfit with this --shape-model")
    encoder = RegressionEncoder(model, config)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelDataError(f"regressor weights {file} do not fit the encoder ({str(exc)[:120]}): {_HINT}") from None
    return encoder.to(device).eval()


def regressor_provenance(path: str | Path | None = None) -> dict[str, Any] | None:
    """The provenance file beside the weights, or None when no regressor ships."""
    file = (Path(path) if path is not None else SHIPPED_REGRESSOR).with_suffix(".json")
    if not file.is_file():
        return None
    try:
        return dict(json.loads(file.read_text()))
    except (OSError, ValueError) as exc:
        raise ModelDataError(f"{file} is unreadable ({exc}): reinstall ganfit") from exc
