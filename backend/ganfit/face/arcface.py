"""insightface ArcFace ONNX models as the identity network: an optional back-end.

Why optional: insightface's recognition models (``w600k_r50.onnx`` of ``buffalo_l``,
``glintr100.onnx`` of ``antelopev2``, ...) are stronger than dlib's ResNet, but they are
downloaded at run time by insightface and licensed for non-commercial research only, so the
engine never fetches them; it uses one when the user points at the file (``docs/backends.md``).

The fit needs gradients through the network, so the ONNX graph is turned into a frozen PyTorch
module: by ``onnx2torch`` when it imports, otherwise by the small converter here
(``OnnxGraphModule``), written from the ONNX operator specification for the operators the
iresnet ArcFace exports use (``SUPPORTED_OPS``). Any other operator is refused at load time with
a ``ModelDataError`` naming it. ``tests/test_optional_backends.py`` checks the built-in converter
against onnxruntime on generated graphs; no real insightface file was available to test with.

insightface's conventions, as its ``ArcFaceONNX`` and ``face_align`` code applies them:
- Chip: 112x112, cut by the least-squares similarity (``skimage`` ``SimilarityTransform``,
  i.e. Umeyama) taking five detected points onto ``arcface_dst`` (``ARCFACE_TEMPLATE``),
  bilinear ``cv2.warpAffine``, black border. ``chip_transform`` returns the inverse of the same
  fit (chip pixel indices -> image positions, ``face/identity.py``).
- Input: ``cv2.dnn.blobFromImages(bgr_chips, 1/127.5, (112, 112), (127.5,) * 3, swapRB=True)``,
  i.e. **RGB** planes, ``(pixel - 127.5) / 127.5``. Models converted from MXNet carry their own
  ``Sub``/``Mul`` nodes at the start; for those (a ``Sub`` and a ``Mul`` among the first 8
  nodes, insightface's own test) the input is raw RGB 0..255.
- Output: the raw ``(B, 512)`` embedding; insightface compares L2-normalised ones (cosine).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganfit.errors import GanfitError, ModelDataError
from ganfit.models.limits import DeclaredSizeError, SizeBudget, check_declared, check_file_size
from ganfit.face.identity import five_points_from_ibug68, invert_affine, similarity_transform

__all__ = [
    "ARCFACE_TEMPLATE",
    "CHIP_SIZE",
    "SUPPORTED_OPS",
    "ArcFaceNetwork",
    "OnnxGraphModule",
    "arcface_template",
    "convert_onnx",
    "load_arcface",
]

log = logging.getLogger(__name__)

#: Side of the chip insightface's recognition models take.
CHIP_SIZE = 112
#: insightface's ``arcface_dst``: five points in a 112x112 chip, in chip pixel indices (centres on
#: integers, OpenCV's convention, which is also ``IdentityNetwork.chip_transform``'s). Order:
#: image-left eye (the subject's right), image-right eye, nose tip, image-left mouth corner,
#: image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)

_MXNET_PREFIX_NODES = 8
_DOMAINS = ("", "ai.onnx")


def arcface_template(chip_size: int = CHIP_SIZE) -> np.ndarray:
    """The five-point template for a ``chip_size`` chip (chip pixel indices), as insightface scales
    it: by ``size / 112`` for multiples of 112, else (multiples of 128) by ``size / 128`` plus 8 px
    (scaled) in x."""
    if chip_size % 112 == 0 or chip_size % 128 != 0:
        ratio, shift_x = chip_size / 112.0, 0.0
    else:
        ratio = chip_size / 128.0
        shift_x = 8.0 * ratio
    points = ARCFACE_TEMPLATE * ratio
    points[:, 0] += shift_x
    return points


# --------------------------------------------------------------------------------------------
# Built-in ONNX -> PyTorch converter.


@dataclass(frozen=True)
class _Node:
    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.op_type} node '{self.name}'" if self.name else f"{self.op_type} node"


_Args = list[torch.Tensor | None]
_OpFn = Callable[[_Node, _Args], list[torch.Tensor]]


def _node_error(node: _Node, what: str) -> ModelDataError:
    return ModelDataError(f"ONNX {node.label}: {what} is not supported by ganfit's built-in converter")


def _spatial_pads(node: _Node, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX pads ``[begin..., end...]`` for Conv/MaxPool, ``auto_pad`` resolved (spec formulas)."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    dims = len(kernel)
    if auto_pad == "NOTSET":
        return list(node.attrs.get("pads", [0] * (2 * dims)))
    if auto_pad == "VALID":
        return [0] * (2 * dims)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise _node_error(node, f"auto_pad={auto_pad}")
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        begin = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _pad_2d(x: torch.Tensor, pads: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims by ONNX ``[h_begin, w_begin, h_end, w_end]``."""
    if not any(pads):
        return x
    return F.pad(x, (pads[1], pads[3], pads[0], pads[2]), value=value)


def _conv(node: _Node, args: _Args) -> list[torch.Tensor]:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    assert x is not None and weight is not None
    if x.ndim != 4:
        raise _node_error(node, f"a {x.ndim - 2}-D convolution")
    kernel = list(weight.shape[2:])
    strides = list(node.attrs.get("strides", [1, 1]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    if pads[:2] == pads[2:]:
        padding = (pads[0], pads[1])
    else:
        x, padding = _pad_2d(x, pads), (0, 0)
    return [F.conv2d(x, weight, bias, strides, padding, dilations, node.attrs.get("group", 1))]


def _batch_norm(node: _Node, args: _Args) -> list[torch.Tensor]:
    if node.attrs.get("training_mode", 0):
        raise _node_error(node, "training_mode=1")
    if node.attrs.get("spatial", 1) != 1:
        raise _node_error(node, "spatial=0")
    x, scale, bias, mean, var = args[:5]
    assert x is not None
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=node.attrs.get("epsilon", 1e-5))]


def _prelu(node: _Node, args: _Args) -> list[torch.Tensor]:
    x, slope = args[0], args[1]
    assert x is not None and slope is not None
    return [torch.where(x >= 0, x, x * slope)]


def _div(node: _Node, args: _Args) -> list[torch.Tensor]:
    a, b = args[0], args[1]
    assert a is not None and b is not None
    if not a.is_floating_point() and not b.is_floating_point():
        return [torch.div(a, b, rounding_mode="trunc")]
    return [a / b]


def _flatten(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _gemm(node: _Node, args: _Args) -> list[torch.Tensor]:
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    assert a is not None and b is not None
    if node.attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if node.attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = a @ b
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return [y]


def _ints(node: _Node, args: _Args, index: int, attr: str) -> list[int] | None:
    """An int list given as an input (newer opsets) or an attribute (older ones)."""
    if len(args) > index and args[index] is not None:
        return [int(v) for v in args[index].reshape(-1).tolist()]  # type: ignore[union-attr]
    value = node.attrs.get(attr)
    return None if value is None else [int(v) for v in value]


def _reshape(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    shape = _ints(node, args, 1, "shape")
    if shape is None:
        raise _node_error(node, "a Reshape without a shape")
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _dropout(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    training = args[2] if len(args) > 2 else None
    if training is not None and bool(training.reshape(-1)[0]):
        raise _node_error(node, "training_mode=True")
    return [x, torch.ones_like(x, dtype=torch.bool)]


def _global_average_pool(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    return [x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)]


def _max_pool(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    kernel = list(node.attrs["kernel_shape"])
    if len(kernel) != 2 or x.ndim != 4:
        raise _node_error(node, f"a {len(kernel)}-D max pool")
    strides = list(node.attrs.get("strides", [1, 1]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    x = _pad_2d(x, pads, value=-math.inf)
    return [F.max_pool2d(x, kernel, strides, 0, dilations, ceil_mode=bool(node.attrs.get("ceil_mode", 0)))]


def _transpose(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    perm = node.attrs.get("perm", list(range(x.ndim))[::-1])
    return [x.permute(*perm)]


def _concat(node: _Node, args: _Args) -> list[torch.Tensor]:
    return [torch.cat([a for a in args if a is not None], dim=node.attrs["axis"])]


def _shape(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    dims = list(x.shape)[node.attrs.get("start", 0) : node.attrs.get("end", x.ndim)]
    return [torch.tensor(dims, dtype=torch.int64, device=x.device)]


def _gather(node: _Node, args: _Args) -> list[torch.Tensor]:
    data, indices = args[0], args[1]
    assert data is not None and indices is not None
    axis = node.attrs.get("axis", 0) % data.ndim
    index = indices.long()
    index = torch.where(index < 0, index + data.shape[axis], index)
    picked = data.index_select(axis, index.reshape(-1))
    return [picked.reshape((*data.shape[:axis], *index.shape, *data.shape[axis + 1 :]))]


def _unsqueeze(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    axes = _ints(node, args, 1, "axes")
    if axes is None:
        raise _node_error(node, "an Unsqueeze without axes")
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(node: _Node, args: _Args) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    axes = _ints(node, args, 1, "axes")
    if axes is None:
        return [x.squeeze()]
    for axis in sorted((a % x.ndim for a in axes), reverse=True):
        x = x.squeeze(axis)
    return [x]


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> _OpFn:
    def op(node: _Node, args: _Args) -> list[torch.Tensor]:
        assert args[0] is not None
        return [fn(args[0])]

    return op


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> _OpFn:
    def op(node: _Node, args: _Args) -> list[torch.Tensor]:
        assert args[0] is not None and args[1] is not None
        return [fn(args[0], args[1])]

    return op


def _leaky_relu(node: _Node, args: _Args) -> list[torch.Tensor]:
    assert args[0] is not None
    return [F.leaky_relu(args[0], node.attrs.get("alpha", 0.01))]


_OPS: dict[str, _OpFn] = {
    "Add": _binary(torch.add),
    "BatchNormalization": _batch_norm,
    "Concat": _concat,
    "Conv": _conv,
    "Div": _div,
    "Dropout": _dropout,
    "Flatten": _flatten,
    "Gather": _gather,
    "Gemm": _gemm,
    "GlobalAveragePool": _global_average_pool,
    "Identity": _unary(lambda x: x),
    "LeakyRelu": _leaky_relu,
    "MatMul": _binary(torch.matmul),
    "MaxPool": _max_pool,
    "Mul": _binary(torch.mul),
    "PRelu": _prelu,
    "Relu": _unary(F.relu),
    "Reshape": _reshape,
    "Shape": _shape,
    "Sigmoid": _unary(torch.sigmoid),
    "Squeeze": _squeeze,
    "Sub": _binary(torch.sub),
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
}
#: How many outputs each operator makes here (1 unless listed); a graph using more is refused.
_OUTPUT_COUNTS = {"Dropout": 2}
#: Operators the built-in converter handles (``Constant`` nodes become buffers at load time).
SUPPORTED_OPS = frozenset(_OPS) | {"Constant"}


def _attribute(attr: Any) -> Any:
    from onnx import AttributeProto, helper, numpy_helper

    if attr.type == AttributeProto.TENSOR:
        return torch.from_numpy(np.array(numpy_helper.to_array(attr.t), copy=True))
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR):
        return attr  # only operators the converter refuses carry these
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _constant_value(node: _Node) -> torch.Tensor:
    """The tensor a ``Constant`` node makes (spec: exactly one of these attributes)."""
    attrs = node.attrs
    if "value" in attrs:
        return attrs["value"]
    if "value_float" in attrs:
        return torch.tensor(attrs["value_float"], dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor(list(attrs["value_floats"]), dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(attrs["value_int"], dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(list(attrs["value_ints"]), dtype=torch.int64)
    raise _node_error(node, f"a Constant with {sorted(attrs)}")


class OnnxGraphModule(nn.Module):
    """An ONNX graph run node by node with PyTorch functions: differentiable, frozen, eval-only.

    Initializers and ``Constant`` outputs are buffers (they move with ``.to()`` and never require
    gradients). Batch normalisation always uses the stored statistics and dropout is the
    identity, whatever ``train()`` says: this is an inference graph. ``forward`` takes the
    graph's one input and returns a tuple of its outputs, in ``graph.output`` order.
    """

    def __init__(self, model: Any, source: str = "ONNX model") -> None:
        super().__init__()
        self.source = source
        try:
            self._build(model)
        except ModelDataError as error:
            raise ModelDataError(f"{source}: {error}") from None

    def _build(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        nodes = [
            _Node(n.op_type, n.name, tuple(n.input), tuple(n.output), {a.name: _attribute(a) for a in n.attribute})
            if n.domain in _DOMAINS
            else _Node(f"{n.domain}.{n.op_type}", n.name, tuple(n.input), tuple(n.output), {})
            for n in graph.node
        ]
        unsupported = sorted({n.op_type for n in nodes if n.op_type not in SUPPORTED_OPS})
        if unsupported:
            raise ModelDataError(
                f"ONNX operator(s) {', '.join(unsupported)} not supported by ganfit's built-in converter "
                "(onnx2torch, if installed, handles more)"
            )

        self._buffer_of: dict[str, str] = {}
        for tensor in graph.initializer:
            self._add_constant(tensor.name, torch.from_numpy(np.array(numpy_helper.to_array(tensor), copy=True)))
        inputs = [v.name for v in graph.input if v.name not in self._buffer_of]
        if len(inputs) != 1:
            raise ModelDataError(f"expected a graph with one input, found {len(inputs)} ({', '.join(inputs)})")
        self.input_name = inputs[0]
        self.output_names = tuple(v.name for v in graph.output)

        available = {self.input_name, *self._buffer_of}
        unproduced: dict[str, _Node] = {}
        self._nodes: list[_Node] = []
        for node in nodes:
            for name in node.inputs:
                if name in unproduced:
                    raise _node_error(unproduced[name], f"using output '{name}'")
                if name and name not in available:
                    raise ModelDataError(f"{node.label} reads '{name}', which nothing before it makes")
            if node.op_type == "Constant":
                self._add_constant(node.outputs[0], _constant_value(node))
                available.add(node.outputs[0])
                continue
            made = _OUTPUT_COUNTS.get(node.op_type, 1)
            available.update(o for o in node.outputs[:made] if o)
            unproduced.update((o, node) for o in node.outputs[made:] if o)
            self._nodes.append(node)
        for name in self.output_names:
            if name in unproduced:
                raise _node_error(unproduced[name], f"using output '{name}'")
            if name not in available:
                raise ModelDataError(f"graph output '{name}' is made by no node")
        # After which node each intermediate tensor can be dropped (keeps inference memory flat).
        last_use: dict[str, int] = {}
        for index, node in enumerate(self._nodes):
            for name in node.inputs:
                last_use[name] = index
        keep = set(self.output_names) | set(self._buffer_of)
        self._release: list[tuple[str, ...]] = [() for _ in self._nodes]
        for name, index in last_use.items():
            if name not in keep:
                self._release[index] += (name,)

    def _add_constant(self, name: str, value: torch.Tensor) -> None:
        attribute = f"onnx_const_{len(self._buffer_of)}"
        self.register_buffer(attribute, value)
        self._buffer_of[name] = attribute

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, torch.Tensor] = {name: getattr(self, attr) for name, attr in self._buffer_of.items()}
        values[self.input_name] = x
        for node, release in zip(self._nodes, self._release):
            args: _Args = [values[name] if name else None for name in node.inputs]
            try:
                results = _OPS[node.op_type](node, args)
            except ModelDataError as error:
                raise ModelDataError(f"{self.source}: {error}") from None
            for name, value in zip(node.outputs, results):
                if name:
                    values[name] = value
            for name in release:
                values.pop(name, None)
        return tuple(values[name] for name in self.output_names)


def _onnx2torch_convert() -> Callable[[Any], nn.Module] | None:
    """``onnx2torch.convert`` if it imports (it needs a torchvision that loads beside this torch)."""
    try:
        from onnx2torch import convert  # type: ignore[import-not-found]
    except Exception as error:  # ImportError, or torchvision's RuntimeError on a mismatched torch
        log.debug("onnx2torch is not usable (%s: %s)", type(error).__name__, error)
        return None
    return convert  # type: ignore[no-any-return]


def convert_onnx(model: Any, *, backend: str = "auto", source: str = "ONNX model") -> tuple[nn.Module, str]:
    """A frozen, eval-mode PyTorch module running the ONNX ``model``, and which converter made it.

    ``backend``: ``"onnx2torch"``, ``"builtin"``, or ``"auto"`` (onnx2torch when it imports and
    converts the graph, else the built-in converter). The module returns the graph's outputs
    (a tensor or a tuple; onnx2torch returns one tensor for a one-output graph).
    """
    if backend not in ("auto", "builtin", "onnx2torch"):
        raise ValueError(f"backend must be 'auto', 'builtin' or 'onnx2torch', got {backend!r}")
    module: nn.Module | None = None
    used = "builtin"
    if backend != "builtin":
        convert = _onnx2torch_convert()
        if convert is None and backend == "onnx2torch":
            raise GanfitError("onnx2torch is not importable here; install it (it needs torchvision) or use the built-in converter")
        if convert is not None:
            try:
                module, used = convert(model), "onnx2torch"
            except Exception as error:
                if backend == "onnx2torch":
                    raise ModelDataError(f"{source}: onnx2torch could not convert it ({type(error).__name__}: {error})") from error
                log.warning("onnx2torch could not convert %s (%s); using the built-in converter", source, error)
    if module is None:
        module = OnnxGraphModule(model, source)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module, used


# --------------------------------------------------------------------------------------------
# Loading an insightface model and choosing its feature tensors.


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise GanfitError("ArcFace models need the 'onnx' package: pip install 'ganfit[arcface]'") from error
    return onnx


def _tensor_dims(value_info: Any) -> tuple[int | None, ...] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)


_ONNX_HINT = "check it is an insightface recognition model such as w600k_r50.onnx, or re-download it"


def _graph_tensors(graph: Any) -> list[Any]:
    """Every tensor a graph stores: initializers and tensor attributes (``Constant`` values),
    subgraphs included."""
    from onnx import AttributeProto

    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                tensors.extend(attr.tensors)
            elif attr.type == AttributeProto.GRAPH:
                tensors.extend(_graph_tensors(attr.g))
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    tensors.extend(_graph_tensors(sub))
    return tensors


def _check_tensor_sizes(onnx: Any, model: Any, path: Path) -> None:
    """Refuse tensors that declare more than ``limits`` allow (dims x element size, and the bytes an
    external-data tensor would read), then read the external data of the ones that passed.

    Why: converting a tensor allocates what its dims declare, and ONNX reads external data of
    whatever length the model names, so a few-hundred-byte model could ask for gigabytes.
    """
    budget = SizeBudget(path, "ArcFace model", _ONNX_HINT)
    external = False
    try:
        for tensor in _graph_tensors(model.graph):
            name = f"tensor {tensor.name!r}"
            try:
                dtype: Any = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            except (KeyError, ValueError, TypeError):
                dtype = 8  # an unknown element type: count 8 bytes an element
            budget.check(name, tensor.dims, dtype)
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                external = True
                info = {entry.key: entry.value for entry in tensor.external_data}
                length = info.get("length")
                if length is None:  # the rest of the file from the offset
                    try:
                        length = (path.parent / info.get("location", "")).stat().st_size - int(info.get("offset") or 0)
                    except (OSError, ValueError):
                        continue  # ONNX reports a missing or unreadable data file itself
                check_declared(f"the external data of {name}", (max(int(length), 0),), np.uint8)
    except DeclaredSizeError as error:
        raise budget.refuse(error) from None
    except ValueError as error:  # a non-numeric length or offset
        raise ModelDataError(f"{path}: malformed external-data entry ({error}); {_ONNX_HINT}") from None
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as error:
            raise ModelDataError(
                f"{path}: cannot read its external weights ({type(error).__name__}: {error}); {_ONNX_HINT}"
            ) from None


def _inferred_shapes(onnx: Any, model: Any, input_name: str, chip_size: int) -> dict[str, tuple[int | None, ...]]:
    """Shapes of every tensor for one ``(1, 3, S, S)`` input, by ONNX shape inference.

    Inference runs on a probe graph whose large initializers are declared as inputs (shape only),
    so the weights are not copied.
    """
    helper = onnx.helper
    small = [t for t in model.graph.initializer if math.prod(t.dims) <= 64]
    large = [t for t in model.graph.initializer if math.prod(t.dims) > 64]
    inputs = [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, [1, 3, chip_size, chip_size])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large]
    graph = helper.make_graph(model.graph.node, "probe", inputs, list(model.graph.output), initializer=small)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = max(model.ir_version, 4)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception as error:  # shape inference is a convenience: without it, no auto features
        log.warning("ONNX shape inference failed (%s); intermediate features must be named", error)
        return {}
    shapes = {}
    for value_info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = _tensor_dims(value_info)
        if dims is not None:
            shapes[value_info.name] = dims
    return shapes


def _default_features(model: Any, shapes: dict[str, tuple[int | None, ...]], chip_size: int) -> list[str]:
    """The last residual ``Add`` at each spatial resolution below the input's (the last node there
    when it has no ``Add``), largest resolution first: the stage outputs of a ResNet."""
    last_any: dict[tuple[int, int], str] = {}
    last_add: dict[tuple[int, int], str] = {}
    for node in model.graph.node:
        if not node.output or not node.output[0]:
            continue
        dims = shapes.get(node.output[0])
        if dims is None or len(dims) != 4 or dims[2] is None or dims[3] is None:
            continue
        height, width = int(dims[2]), int(dims[3])
        if height * width <= 1 or height * width >= chip_size * chip_size:
            continue
        last_any[(height, width)] = node.output[0]
        if node.op_type == "Add":
            last_add[(height, width)] = node.output[0]
    resolutions = sorted(last_any, key=lambda hw: -hw[0] * hw[1])
    return [last_add.get(hw, last_any[hw]) for hw in resolutions]


def _uses_mxnet_normalisation(model: Any) -> bool:
    """insightface's test for MXNet-converted models, which subtract and scale inside the graph."""
    first = list(model.graph.node)[:_MXNET_PREFIX_NODES]
    has_sub = any(n.op_type == "Sub" or n.name.startswith(("Sub", "_minus")) for n in first)
    has_mul = any(n.op_type == "Mul" or n.name.startswith(("Mul", "_mul")) for n in first)
    return has_sub and has_mul


class ArcFaceNetwork(nn.Module):
    """An insightface recognition model as an ``IdentityNetwork``: frozen, differentiable.

    ``features`` returns the embedding and the activations named in ``feature_names`` (by default
    the last residual ``Add`` at each spatial resolution below the input's: for iresnet at 112 px,
    the outputs of its four stages at 56, 28, 14 and 7 px).
    """

    def __init__(self, graph: nn.Module, *, name: str, chip_size: int, input_mean: float, input_std: float,
                 feature_names: Sequence[str], backend: str, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.name = name
        self.chip_size = int(chip_size)
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)
        self.feature_names = tuple(feature_names)
        self.backend = backend
        self.embedding_dim = embedding_dim
        self._template = arcface_template(self.chip_size)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ArcFaceNetwork:
        """Always eval: batch norm must keep its stored statistics (an onnx2torch module has real
        BatchNorm layers that ``train()`` would switch to batch statistics)."""
        return super().train(False)

    def chip_transform(self, landmarks68: np.ndarray) -> np.ndarray:
        """``(2, 3)`` map from chip pixel indices to image positions: the inverse of the
        least-squares similarity taking the five iBUG-derived points onto insightface's template
        (fitted image -> chip, as insightface does). The image side's convention differs from
        OpenCV's by 0.5 px, which only changes the fitted translation: chips match insightface's."""
        image_to_chip = similarity_transform(five_points_from_ibug68(landmarks68), self._template)
        return invert_affine(image_to_chip)

    def _run(self, chips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = self.chip_size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected (B, 3, {size}, {size}) RGB chips in [0, 1], got {tuple(chips.shape)}")
        outputs = self.graph(chips * (255.0 / self.input_std) - self.input_mean / self.input_std)
        if isinstance(outputs, torch.Tensor):
            return (outputs,)
        return tuple(outputs)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` raw embeddings (not normalised) of ``(B, 3, S, S)`` RGB chips in [0, 1]."""
        return self._run(chips)[0]

    def features(self, chips: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding and the ``feature_names`` activations, in that order."""
        outputs = self._run(chips)
        return outputs[0], list(outputs[1 : 1 + len(self.feature_names)])

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.embed(chips)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, chip_size={self.chip_size}, backend={self.backend!r}"


def load_arcface(path: str | Path, *, backend: str = "auto", feature_names: Sequence[str] | None = None) -> ArcFaceNetwork:
    """Load an insightface recognition ONNX file (``w600k_r50.onnx``, ``glintr100.onnx``, ...).

    ``feature_names`` overrides the intermediate tensors ``features`` returns (ONNX tensor names).
    Raises ``ModelDataError`` for a missing or non-ONNX file, a graph that is not one image in
    and one ``(B, D)`` embedding out, or operators the converter does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelDataError(f"ArcFace model {path} not found: pass the path of an insightface recognition .onnx file")
    onnx = _import_onnx()
    if path.stat().st_size == 0:
        raise ModelDataError(f"{path} is not an ONNX model (the file is empty); expected e.g. w600k_r50.onnx")
    check_file_size(path, "ArcFace model", _ONNX_HINT)
    try:
        # External data (weights in files beside the model) is read only after its sizes are checked.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise ModelDataError(f"{path} is not an ONNX model ({type(error).__name__}); expected e.g. w600k_r50.onnx") from error
    _check_tensor_sizes(onnx, model, path)
    graph = model.graph
    if not graph.node or not graph.output:
        raise ModelDataError(f"{path} is not an ONNX model (no graph); expected e.g. w600k_r50.onnx")
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelDataError(
            f"{path}: expected one image input and one embedding output, found {len(inputs)} inputs and {len(graph.output)} outputs"
        )
    dims = _tensor_dims(inputs[0]) or ()
    if len(dims) != 4 or dims[1] not in (3, None) or (dims[2] and dims[3] and dims[2] != dims[3]):
        raise ModelDataError(f"{path}: input '{inputs[0].name}' has shape {dims}, expected (B, 3, S, S) as ArcFace models take")
    chip_size = int(dims[2]) if dims[2] else CHIP_SIZE

    shapes = _inferred_shapes(onnx, model, inputs[0].name, chip_size)
    out_dims = shapes.get(graph.output[0].name) or _tensor_dims(graph.output[0])
    if out_dims is not None and len(out_dims) != 2:
        raise ModelDataError(f"{path}: output '{graph.output[0].name}' has shape {out_dims}, expected (B, D) embeddings")
    embedding_dim = out_dims[1] if out_dims else None
    if feature_names is None:
        feature_names = _default_features(model, shapes, chip_size)
    produced = {o for n in graph.node for o in n.output}
    missing = [name for name in feature_names if name not in produced]
    if missing:
        raise ModelDataError(f"{path}: no node makes the feature tensor(s) {', '.join(missing)}")
    # The features become extra graph outputs, so either converter returns them with the embedding.
    for name in feature_names:
        known = shapes.get(name)
        feature_dims = None if known is None else [None, *known[1:]]  # any batch size
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, feature_dims))

    if _uses_mxnet_normalisation(model):
        input_mean, input_std = 0.0, 1.0
    else:
        input_mean, input_std = 127.5, 127.5
    module, used = convert_onnx(model, backend=backend, source=str(path))
    network = ArcFaceNetwork(
        module,
        name=f"arcface:{path.name}",
        chip_size=chip_size,
        input_mean=input_mean,
        input_std=input_std,
        feature_names=feature_names,
        backend=used,
        embedding_dim=embedding_dim,
    )
    log.info(
        "ArcFace model %s: %d px chips, %s-D embedding, input (x - %g) / %g, converter %s, features %s",
        path.name, chip_size, embedding_dim, input_mean, input_std, used, ", ".join(feature_names) or "none",
    )
    return network
