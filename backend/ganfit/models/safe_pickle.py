"""Read pickled model files without running code from them.

FLAME ships as Python 2 pickles of a dict whose arrays are chumpy ``Ch`` objects and scipy sparse
matrices. A plain ``pickle.load`` imports whatever module the file names and calls whatever it
says, so a hostile file runs arbitrary code, and an honest one needs chumpy (unmaintained) and
scipy installed. ``RestrictedUnpickler`` resolves only a fixed table of globals:

- numpy's own array, dtype and scalar reconstructors (they build arrays from bytes, nothing else);
- ``set``/``frozenset``/``object`` and a latin-1-only ``_codecs.encode`` (Python 3 pickles of bytes);
- chumpy classes and scipy CSC/CSR matrices, mapped to local stand-ins that only keep the state
  they are given (``StandIn``); ``copyreg._reconstructor`` only for those stand-ins.

Every other global (``os.system``, ``builtins.eval``, any class) is refused before anything is
called, and persistent ids are refused too.

Sizes: a pickle can declare far more than it holds (an array state's shape, a sparse matrix's
dense shape, a list of lists built from a few memo references), so every array is checked
against ``limits`` from what it declares before numpy allocates it.
"""

from __future__ import annotations

import builtins
import functools
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import ModelDataError
from .limits import DeclaredSizeError, SizeBudget, check_declared, check_file_size, nested_shape

PICKLE_SUFFIXES = (".pkl", ".pickle")


class PickleRefused(pickle.UnpicklingError):
    """The pickle names a global outside the allowed table (raised before it is resolved)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class StandIn:
    """A chumpy or scipy object read from a pickle: the arguments and state it carried, no code.

    Subclasses name the class they replace in ``source``; nothing of chumpy or scipy is imported.
    """

    source = "?"
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accepts and ignores constructor arguments (``__new__`` kept them)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.source} stand-in>"

    def to_array(self) -> np.ndarray:
        raise ValueError(f"a {self.source} object holds no array this reader understands")


class ChumpyStandIn(StandIn):
    """A chumpy object. A leaf ``Ch`` pickles its ``__dict__``; the array is under ``x``."""

    def to_array(self) -> np.ndarray:
        state = self.state
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError(
                f"{self.source} is a chumpy expression, not stored values (re-save the file with plain arrays)"
            )
        value = state["x"]
        return value.to_array() if isinstance(value, ChumpyStandIn) else _checked_asarray(value)


class SparseStandIn(StandIn):
    """A scipy CSC/CSR matrix: ``data``, ``indices``, ``indptr`` and shape, expanded by numpy."""

    compressed_axis = 1  # CSC compresses columns; CSR rows (set on the subclass)

    def to_array(self) -> np.ndarray:
        state = self.state if isinstance(self.state, dict) else {}
        try:
            data, indices, indptr = (_checked_asarray(state[k]) for k in ("data", "indices", "indptr"))
            rows, cols = (int(n) for n in state.get("_shape", state.get("shape")) or ())
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{self.source} lacks data/indices/indptr/shape") from exc
        if min(rows, cols) < 0:
            raise ValueError(f"{self.source} has the negative shape {(rows, cols)}")
        check_declared(f"{self.source}'s dense form", (rows, cols), data.dtype)
        self._check_structure(data, indices, indptr, rows, cols)
        outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        dense = np.zeros((rows, cols), dtype=data.dtype)
        index = (indices, outer) if self.compressed_axis == 1 else (outer, indices)
        np.add.at(dense, index, data)
        return dense

    def _check_structure(
        self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, rows: int, cols: int
    ) -> None:
        """The compressed arrays must agree with each other and the shape, or expanding them
        would repeat entries ``indptr`` invents (np.repeat allocates what its counts say)."""
        outer, inner = (cols, rows) if self.compressed_axis == 1 else (rows, cols)
        steps = np.diff(indptr.astype(np.int64, copy=False))
        consistent = (
            data.ndim == indices.ndim == indptr.ndim == 1
            and indices.dtype.kind in "iu"
            and indptr.dtype.kind in "iu"
            and len(indptr) == outer + 1
            and len(data) == len(indices)
            and int(indptr[0]) == 0
            and int(indptr[-1]) == len(indices)
            and bool((steps >= 0).all())
            and (len(indices) == 0 or (int(indices.min()) >= 0 and int(indices.max()) < inner))
        )
        if not consistent:
            raise ValueError(f"{self.source} has data/indices/indptr that do not fit together or its shape {(rows, cols)}")


class _CscStandIn(SparseStandIn):
    compressed_axis = 1


class _CsrStandIn(SparseStandIn):
    compressed_axis = 0


_CHUMPY_MODULES = frozenset(
    {"chumpy", "chumpy.ch", "chumpy.ch_ops", "chumpy.reordering", "chumpy.linalg", "chumpy.logic", "chumpy.utils"}
)
_SCIPY_MODULES = frozenset(
    {
        "scipy.sparse",
        "scipy.sparse.csc",
        "scipy.sparse._csc",
        "scipy.sparse.csr",
        "scipy.sparse._csr",
        "scipy.sparse.compressed",
        "scipy.sparse._compressed",
    }
)
_SPARSE_BASES: dict[str, type[SparseStandIn]] = {
    "csc_matrix": _CscStandIn,
    "csc_array": _CscStandIn,
    "csr_matrix": _CsrStandIn,
    "csr_array": _CsrStandIn,
}
_stand_in_classes: dict[tuple[str, str], type[StandIn]] = {}


def _stand_in(module: str, name: str, base: type[StandIn]) -> type[StandIn]:
    """One stand-in class per pickled class name, so messages can say what the file held."""
    key = (module, name)
    if key not in _stand_in_classes:
        _stand_in_classes[key] = type(name, (base,), {"source": f"{module}.{name}", "__module__": __name__})
    return _stand_in_classes[key]


def _reconstructor(cls: Any, base: Any, state: Any) -> StandIn:
    """``copyreg._reconstructor`` (protocol 0/1 objects), for stand-ins on ``object`` only."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)) or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor is allowed only for chumpy/scipy stand-ins")
    return cls.__new__(cls)


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes: latin-1 text only."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 byte strings")
    return text.encode("latin-1")


def _frombuffer(budget: SizeBudget, buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array reconstructor, for plain dtypes; the result owns a copy."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed in a model file")
    budget.check("a pickled array", shape, dtype)
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


class _CheckedArray(np.ndarray):
    """What the array reconstructor makes in a restricted pickle: ``__setstate__`` (the pickle's
    BUILD) checks the shape and dtype the state declares before numpy allocates them. numpy
    fills an object array of the declared shape before it reads the values, so a 100-byte
    pickle could otherwise ask for gigabytes. ``_plain`` turns these back into ndarrays."""

    _budget: SizeBudget

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) in (4, 5):  # ([version,] shape, dtype, fortran, data)
            try:
                shape, dtype = tuple(int(d) for d in state[-4]), np.dtype(state[-3])
            except (TypeError, ValueError):
                pass  # numpy refuses such a state itself
            else:
                self._budget.check("a pickled array", shape, dtype)
        super().__setstate__(state)


def _reconstruct(budget: SizeBudget, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for plain arrays, as a ``_CheckedArray``."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed in a model file")
    budget.check("a pickled array", shape, dtype)
    array: _CheckedArray = _ARRAY_RECONSTRUCT(_CheckedArray, shape, dtype)
    array._budget = budget
    return array


def _checked_asarray(value: Any) -> np.ndarray:
    """``np.asarray`` after checking the shape nested lists would give (8 bytes per element at most)."""
    if not isinstance(value, np.ndarray):
        check_declared("", nested_shape(value), np.float64, how=" as nested lists")
    return np.asarray(value)


def _plain(value: Any, seen: dict[int, Any] | None = None) -> Any:
    """The unpickled object with every ``_CheckedArray`` as a plain ndarray view (lists and
    dicts are changed in place, so shared references stay shared and each is visited once)."""
    seen = {} if seen is None else seen
    key = id(value)
    if key in seen:
        return seen[key]
    if isinstance(value, _CheckedArray):
        seen[key] = result = value.view(np.ndarray)
        return result
    seen[key] = value
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _plain(item, seen)
    elif isinstance(value, dict):
        for name, item in value.items():
            value[name] = _plain(item, seen)
    elif isinstance(value, tuple):
        seen[key] = value = tuple(_plain(item, seen) for item in value)
    elif isinstance(value, StandIn):
        value.args = tuple(_plain(item, seen) for item in value.args)
        value.state = _plain(value.state, seen)
    return value


_ARRAY_RECONSTRUCT: Any = np.empty(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
_SCALAR = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
_ARRAY_GLOBALS = {(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")}
_FROMBUFFER_GLOBALS = {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "scalar"): _SCALAR for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(m, n): getattr(builtins, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "object")},
    ("_codecs", "encode"): _latin1_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the table above (see the module docstring).

    ``budget`` counts the arrays the pickle declares (``limits``); a ``DeclaredSizeError``
    stops the load before numpy allocates an oversized one.
    """

    def __init__(self, file: BinaryIO, *, budget: SizeBudget | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        name = getattr(file, "name", None)
        self.budget = budget or SizeBudget(Path(name if isinstance(name, str) else "<pickle>"), "Model", "check the file")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return functools.partial(_reconstruct, self.budget)
        if (module, name) in _FROMBUFFER_GLOBALS:
            return functools.partial(_frombuffer, self.budget)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module in _CHUMPY_MODULES:
            return _stand_in(module, name, ChumpyStandIn)
        if module in _SCIPY_MODULES and name in _SPARSE_BASES:
            return _stand_in(module, name, _SPARSE_BASES[name])
        raise PickleRefused(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a model file")


def is_pickle(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts a protocol-2+ pickle."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def loads_restricted(data: bytes, budget: SizeBudget | None = None) -> Any:
    """Unpickle bytes with ``RestrictedUnpickler`` (latin-1 for Python 2 strings, as FLAME needs)."""
    return _plain(RestrictedUnpickler(io.BytesIO(data), budget=budget, encoding="latin1").load())


def load_restricted(stream: BinaryIO, budget: SizeBudget | None = None) -> Any:
    """Unpickle a stream with ``RestrictedUnpickler`` (latin-1 for Python 2 strings)."""
    return _plain(RestrictedUnpickler(stream, budget=budget, encoding="latin1").load())


def load_pickle_file(path: Path, what: str, hint: str) -> Any:
    """Unpickle a model file safely; any failure is one ``ModelDataError`` naming ``path``.

    ``what`` names the expected content in messages ("FLAME model"); ``hint`` says what to do.
    """
    budget = SizeBudget(path, what, hint)
    if path.is_file() and path.stat().st_size > 0:  # an empty file is reported as truncated below
        check_file_size(path, what, hint)  # the whole pickle is read into memory
    try:
        with path.open("rb") as stream:
            return load_restricted(stream, budget)
    except DeclaredSizeError as exc:
        raise budget.refuse(exc) from None
    except PickleRefused as exc:
        raise ModelDataError(
            f"{what} file {path} was refused: it asks to run {exc.module}.{exc.name}, which a model file "
            f"never needs (ganfit only reads numpy arrays from pickles); {hint}"
        ) from None
    except OSError as exc:
        raise ModelDataError(f"{what} file {path} cannot be opened ({exc.strerror or exc}): {hint}") from None
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise ModelDataError(f"{what} file {path} is truncated (the pickle ends early): {hint}") from None
        raise ModelDataError(f"{what} file {path} is not a readable pickle ({_short(exc)}): {hint}") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError, MemoryError from hostile bytes
        raise ModelDataError(
            f"{what} file {path} is not a readable pickle ({exc.__class__.__name__}: {_short(exc)}): {hint}"
        ) from None


def to_plain_array(value: Any) -> np.ndarray:
    """An ndarray from a pickled value: an ndarray, a chumpy ``Ch`` or a scipy sparse matrix.

    Raises ``ValueError`` (a ``DeclaredSizeError`` when the value declares more than ``limits``
    allow) for anything else."""
    if isinstance(value, StandIn):
        value = value.to_array()
    array = _checked_asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"holds {array.dtype} values, not numbers")
    return array


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
