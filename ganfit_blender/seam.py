"""The seam with the engine, defined once on the engine's side (issue 18).

``protocol`` (the protocol's version, modes and progress stages) and ``result_schema`` (the
result folder's format) are the engine's own stdlib-only modules, ``backend/ganfit/protocol.py``
and ``backend/ganfit/io/result_schema.py``. ``build.py`` copies them into the extension zip as
``_seam/``; in a source checkout (tests, tools) they are read from ``backend/`` directly. Either
way the add-on and the engine read the same file, so neither side can drift.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["protocol", "result_schema"]

_SOURCES = {"protocol": "protocol.py", "result_schema": "io/result_schema.py"}


def _load(name: str) -> Any:
    """The vendored module in an installed extension, else the engine's file beside us."""
    if __package__:  # else imported on its own, as the bpy-free reader's tests do
        try:
            return importlib.import_module(f"{__package__}._seam.{name}")
        except ModuleNotFoundError:
            pass
    source = Path(__file__).resolve().parents[1] / "backend" / "ganfit" / _SOURCES[name]
    spec = importlib.util.spec_from_file_location(f"{__package__ or 'ganfit_blender'}._seam_{name}", source)
    if spec is None or spec.loader is None or not source.is_file():
        raise ImportError(f"GANFit's {name} definitions are missing ({source}); reinstall the extension")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load("protocol")
result_schema = _load("result_schema")
