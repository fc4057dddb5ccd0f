"""How large a model file may say its arrays are, checked from headers before anything is read.

Why: a model file is a small header plus data, and readers allocate what the header declares
before they look at the data. A 2 kB HDF5 file declaring a gzip-chunked ``(3, 10**9)`` dataset, an
npz whose ``.npy`` header says ``(10**10,)``, a pickle whose scipy matrix claims a
``(10**6, 10**6)`` dense shape: each makes numpy or h5py allocate gigabytes, and the kernel kills
the process without a message. So every model reader asks this module first, with the shape and
dtype the file *declares* (from the HDF5 dataset, the ``.npy`` header, the pickled array state,
the ONNX tensor dims), and refuses with a one-line ``ModelDataError`` naming the file, the
array, its declared size and the limit.

The limits are far above every real model and far below what hurts: the largest array of a
Basel Face Model 2017 file (``pcaBasis``, 159447 x 199 float32) is 121 MiB, FLAME's
``shapedirs`` (5023 x 3 x 400 float64) 46 MiB, the biggest ArcFace initializer ~50 MiB, the
shipped texture GAN 15 MB in all. One array may declare ``ARRAY_LIMIT_BYTES`` (1 GiB), one file
``TOTAL_FACTOR`` times that (4 GiB). A user with a genuinely larger model raises both with the
environment variable ``GANFIT_MODEL_LIMIT_GIB`` (the per-array limit in GiB).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import ModelDataError

__all__ = [
    "ARRAY_LIMIT_BYTES",
    "LIMIT_ENV",
    "DeclaredSizeError",
    "SizeBudget",
    "array_limit",
    "check_declared",
    "check_file_size",
    "check_npy",
    "check_npz",
    "check_zip_members",
    "declared_bytes",
    "format_bytes",
    "nested_shape",
    "text_limit",
    "read_npy_header",
    "total_limit",
]

#: Environment variable that overrides the per-array limit (in GiB; the file limit scales with it).
LIMIT_ENV = "GANFIT_MODEL_LIMIT_GIB"
#: Default largest size one array of a model file may declare.
ARRAY_LIMIT_BYTES = 1 << 30
#: A whole file may declare this many times the per-array limit.
TOTAL_FACTOR = 4
_NPY_PREFIX = b"\x93NUMPY"


def array_limit() -> int:
    """Bytes one array may declare: ``GANFIT_MODEL_LIMIT_GIB`` when set to a positive number."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if raw:
        try:
            gib = float(raw)
        except ValueError:
            gib = 0.0
        if gib > 0 and math.isfinite(gib):
            return int(gib * (1 << 30))
    return ARRAY_LIMIT_BYTES


def total_limit() -> int:
    """Bytes all the arrays of one file may declare together."""
    return TOTAL_FACTOR * array_limit()


def text_limit() -> int:
    """Bytes a text model file (OBJ, JSON) may have: its numbers become Python objects, some 5 to
    50 times the size of their text, so a sixteenth of the per-array limit (64 MiB by default;
    a full-head BFM OBJ is ~15 MB, a landmark JSON 1 kB)."""
    return array_limit() // 16


def format_bytes(count: int) -> str:
    """``1.5 GiB``-style size for messages (exact integers, so no overflow for absurd counts)."""
    for unit, shift in (("EiB", 60), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            value = count / (1 << shift)
            return f"{value:.1f} {unit}" if value < 10_000 else f"{value:.2e} {unit}"
    return f"{count} bytes"


class DeclaredSizeError(ValueError):
    """An array declares more than the limits allow; ``str()`` says how much, not which file."""


def declared_bytes(shape: Iterable[Any], itemsize: int) -> int:
    """Bytes an array of ``shape`` would take, in Python integers (a hostile shape cannot wrap)."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims) or int(itemsize) < 0:
        raise DeclaredSizeError(f"declares a negative size {tuple(dims)} x {int(itemsize)} bytes")
    return math.prod(dims) * int(itemsize)


def _itemsize(dtype: Any) -> tuple[int, str]:
    """Bytes per element and a name for messages, from a dtype (or a plain byte count)."""
    if isinstance(dtype, int):
        return dtype, f"{dtype}-byte"
    kind = np.dtype(dtype)
    return kind.itemsize, str(kind)


def _advice() -> str:
    return f"if the model really is this large, set {LIMIT_ENV} to a larger per-array limit in GiB"


def check_declared(name: str, shape: Iterable[Any], dtype: Any, how: str = "") -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes; ``DeclaredSizeError`` over the per-array limit.

    ``name`` says which array in the message ("'shapedirs'", "a pickled array"; empty when the
    caller names it), ``how`` how it is stored (" as nested lists").
    """
    shape = tuple(int(d) for d in shape)
    itemsize, kind = _itemsize(dtype)
    size = declared_bytes(shape, itemsize)
    limit = array_limit()
    if size > limit:
        subject = f"{name} declares" if name else "declares"
        raise DeclaredSizeError(
            f"{subject} {kind} {shape}{how} = {format_bytes(size)}, more than the {format_bytes(limit)} "
            f"one model array may take ({_advice()})"
        )
    return size


class SizeBudget:
    """The declared sizes of one file's arrays, checked one by one and in total.

    ``check`` raises ``DeclaredSizeError`` (readers that report in their own words catch it);
    ``refuse`` turns one into the file's one-line ``ModelDataError``; ``require`` does both.
    ``what`` names the file's role in messages ("FLAME model"), ``hint`` says what to do.
    """

    def __init__(self, path: str | Path, what: str, hint: str) -> None:
        self.path = Path(path)
        self.what = what
        self.hint = hint
        self.total = 0

    def check(self, name: str, shape: Iterable[Any], dtype: Any) -> int:
        """Count one array; raise ``DeclaredSizeError`` when it or the file's total is too large."""
        size = check_declared(name, shape, dtype)
        self.total += size
        if self.total > total_limit():
            raise DeclaredSizeError(
                f"{name} brings the arrays it declares to {format_bytes(self.total)}, more than the "
                f"{format_bytes(total_limit())} one model file may take ({_advice()})"
            )
        return size

    def refuse(self, error: DeclaredSizeError) -> ModelDataError:
        """The one-line error for the user: file, array, declared size, limit, what to do."""
        return ModelDataError(f"{self.what} file {self.path} is refused: {error}: {self.hint}")

    def require(self, name: str, shape: Iterable[Any], dtype: Any) -> int:
        """``check``, raising the file's ``ModelDataError`` instead."""
        try:
            return self.check(name, shape, dtype)
        except DeclaredSizeError as exc:
            raise self.refuse(exc) from None


def nested_shape(value: Any, depth_limit: int = 32) -> tuple[int, ...]:
    """The shape ``np.asarray`` would give nested lists/tuples, found by walking first elements.

    Why: a pickle can build ``[[x] * 1000] * 1000 ...`` from a few memo references, so a few
    hundred bytes become a billion-element list of lists; its shape is known before numpy copies it.
    """
    shape: list[int] = []
    while isinstance(value, (list, tuple)) and len(shape) < depth_limit:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    if isinstance(value, np.ndarray):
        shape.extend(value.shape)
    return tuple(shape)


def check_file_size(path: Path, what: str, hint: str, limit: int | None = None) -> int:
    """The file's size in bytes; ``ModelDataError`` when it is empty or larger than ``limit``
    (default: the per-file total), before any reader opens it."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelDataError(f"{what} file {path} cannot be opened ({exc.strerror or exc}): {hint}") from None
    if size == 0:
        raise ModelDataError(f"{what} file {path} cannot be read: it is empty (0 bytes): {hint}")
    limit = total_limit() if limit is None else limit
    if size > limit:
        raise ModelDataError(
            f"{what} file {path} is {format_bytes(size)}, more than the {format_bytes(limit)} a model "
            f"file may take ({_advice()}): {hint}"
        )
    return size


def read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from an ``.npy`` header, reading nothing past it.

    Raises ``ValueError`` for a stream that is not an ``.npy`` (numpy's own header parser decides).
    """
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(stream)  # numpy caps headers at 10,000 bytes
    elif version in ((2, 0), (3, 0)):
        # 3.0 differs from 2.0 only in the header's text encoding (UTF-8 field names): read as
        # latin-1 a UTF-8 header still gives the right shape and item size.
        shape, _, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unknown .npy version {version}")
    return tuple(int(d) for d in shape), np.dtype(dtype)


def check_npy(path: Path, what: str, hint: str) -> None:
    """Refuse an empty, foreign or oversized ``.npy`` before ``np.load`` allocates its array."""
    check_file_size(path, what, hint)
    budget = SizeBudget(path, what, hint)
    try:
        with path.open("rb") as stream:
            shape, dtype = read_npy_header(stream)
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise ModelDataError(f"{what} file {path} cannot be read: not an .npy array ({_short(exc)}): {hint}") from None
    budget.require("its array", shape, dtype)


def check_npz(path: Path, what: str, hint: str) -> list[str]:
    """Refuse an empty, foreign, truncated or oversized ``.npz`` before ``np.load`` reads it.

    Reads the zip directory and each member's ``.npy`` header (a few hundred bytes each), and
    checks every declared array against ``SizeBudget``. Returns the array names (as
    ``NpzFile.files`` lists them).
    """
    check_file_size(path, what, hint)
    budget = SizeBudget(path, what, hint)
    names: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.is_dir():
                    continue
                name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
                names.append(name)
                with archive.open(member) as stream:
                    is_npy = stream.read(len(_NPY_PREFIX)) == _NPY_PREFIX
                if not is_npy:  # np.load returns such a member as its raw bytes
                    budget.require(repr(name), (member.file_size,), np.uint8)
                    continue
                with archive.open(member) as stream:
                    shape, dtype = read_npy_header(stream)
                budget.require(repr(name), shape, dtype)
    except ModelDataError:
        raise
    except zipfile.BadZipFile as exc:
        raise ModelDataError(f"{what} file {path} cannot be read: not an .npz archive ({_short(exc)}): {hint}") from None
    except (OSError, ValueError, EOFError, SyntaxError, zipfile.LargeZipFile, NotImplementedError, zlib.error) as exc:
        # A truncated member, a bad CRC or deflate stream, a member that is not an .npy, an unknown compression.
        reason = f"{exc.__class__.__name__}: {_short(exc)}"
        raise ModelDataError(f"{what} file {path} cannot be read: damaged, or not an .npz of arrays ({reason}): {hint}") from None
    return names


def check_zip_members(path: Path, what: str, hint: str) -> None:
    """For zip-based formats read as a whole (TorchScript, torch checkpoints): refuse an archive
    whose members declare more uncompressed bytes than a model file may take, since the reader
    allocates each member's declared size before inflating it. Not a zip: nothing to check."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # the reader reports a damaged archive in its own words
    budget = SizeBudget(path, what, hint)
    for member in members:
        budget.require(f"member {member.filename!r}", (member.file_size,), np.uint8)


def _short(exc: BaseException, limit: int = 100) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
