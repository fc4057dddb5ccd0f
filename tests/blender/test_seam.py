"""One seam, defined once (issue 18): the protocol's and the result format's definitions live in
the engine and travel into the extension zip as copies of the same files."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import BPY_MISSING, ROOT

SEAM = {"_seam/protocol.py": ROOT / "backend/ganfit/protocol.py",
        "_seam/result_schema.py": ROOT / "backend/ganfit/io/result_schema.py"}


def test_the_zip_carries_the_engines_own_files(extension_zip: Path) -> None:
    with zipfile.ZipFile(extension_zip) as archive:
        for member, source in SEAM.items():
            assert archive.read(member) == source.read_bytes(), member


def test_the_installed_add_on_reads_the_vendored_copies(installed_addon: str) -> None:
    pytest.importorskip("bpy", reason=BPY_MISSING)
    seam = sys.modules[f"{installed_addon}.seam"]
    reader = sys.modules[f"{installed_addon}.result_reader"]
    client = sys.modules[f"{installed_addon}.engine_client"]
    assert Path(seam.protocol.__file__).parts[-2:] == ("_seam", "protocol.py")
    assert Path(seam.result_schema.__file__).parts[-2:] == ("_seam", "result_schema.py")
    from ganfit import protocol
    from ganfit.io import result_schema

    assert client.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert (reader.RESULT_FORMAT, reader.RESULT_VERSION) == (result_schema.RESULT_FORMAT, result_schema.RESULT_VERSION)
    assert set(reader._NPZ_DTYPES) <= set(result_schema.NPZ_ARRAYS)
    assert "torch" not in sys.modules


def test_no_side_spells_the_shared_values_again() -> None:
    """The values are written once: the add-on and the engine's users import them (before,
    the protocol version, the result format and the progress stages were each written twice)."""
    import re

    spelled = [re.compile(r"PROTOCOL_VERSION\s*(:\s*\w+\s*)?=\s*\d"), re.compile(r"RESULT_VERSION\s*(:\s*\w+\s*)?=\s*\d"),
               re.compile(r"RESULT_FORMAT\s*(:\s*\w+\s*)?=\s*[\"']"), re.compile(r"[\"']fitting[\"']\s*:\s*\(")]
    for path in [*ROOT.joinpath("ganfit_blender").glob("*.py"), ROOT / "backend/ganfit/serve.py",
                 ROOT / "backend/ganfit/cli.py", ROOT / "backend/ganfit/io/result.py"]:
        text = path.read_text(encoding="utf-8")
        for pattern in spelled:
            assert not pattern.search(text), f"{path.name} defines {pattern.pattern} again"


def test_progress_stages_cover_the_bar() -> None:
    from ganfit.protocol import STAGE_SHARES, progress_fraction, stage_spans

    assert abs(sum(STAGE_SHARES.values()) - 1.0) < 1e-9
    assert progress_fraction("detect", 0, 1) == 0.0 and abs(progress_fraction("write", 2, 2) - 1.0) < 1e-9
    spans = list(stage_spans().values())
    assert all(abs(a[0] + a[1] - b[0]) < 1e-9 for a, b in zip(spans, spans[1:]))
    assert progress_fraction("unknown", 3, 4, default=0.4) == 0.4
