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
