"""Optional back-ends: insightface ArcFace ONNX (identity) and face-alignment's FAN (landmarks).

The real weights cannot be downloaded here, so these tests check the wiring on generated models
with the same input/output signatures: an iresnet-like ONNX graph (``input.1``, (B, 3, 112, 112)
-> (B, 512)) converted by the built-in converter and compared with onnxruntime, and TorchScript
modules mapping (1, 3, 256, 256) -> (1, 68, 64, 64) heatmaps with known peaks.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganfit.errors import GanfitError, ModelDataError
from ganfit.face.arcface import (
    ARCFACE_TEMPLATE,
    CHIP_SIZE,
    SUPPORTED_OPS,
    ArcFaceNetwork,
    OnnxGraphModule,
    arcface_template,
    load_arcface,
)
from ganfit.face.detection import FaceBox
from ganfit.face.fan_landmarks import FAN_INPUT_SIZE, FanLandmarks, fan_crop, heatmap_peaks
from ganfit.face.identity import (
    IdentityNetwork,
    apply_affine,
    five_points_from_ibug68,
    invert_affine,
    similarity_transform,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 13
IR_VERSION = 8  # old enough for any onnxruntime of the last few years


# --------------------------------------------------------------------------------------------
# Generated models.


class _GraphBuilder:
    """Small helper to write ONNX graphs with random (He-scaled) weights."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{len(self.nodes)}", **attrs))
        return output

    def conv(self, x: str, cin: int, cout: int, stride: int, name: str) -> str:
        w = self.rng.normal(0, math.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        return self.node("Conv", [x, self.init(f"{name}.w", w), self.init(f"{name}.b", b)], name,
                         kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1])

    def bn(self, x: str, c: int, name: str) -> str:
        r = self.rng
        params = [
            self.init(f"{name}.scale", r.uniform(0.5, 1.5, c).astype(np.float32)),
            self.init(f"{name}.bias", r.normal(0, 0.1, c).astype(np.float32)),
            self.init(f"{name}.mean", r.normal(0, 0.1, c).astype(np.float32)),
            self.init(f"{name}.var", r.uniform(0.5, 1.5, c).astype(np.float32)),
        ]
        return self.node("BatchNormalization", [x, *params], name, epsilon=2e-5)

    def prelu(self, x: str, c: int, name: str) -> str:
        slope = self.rng.uniform(0.1, 0.3, (c, 1, 1)).astype(np.float32)
        return self.node("PRelu", [x, self.init(f"{name}.slope", slope)], name)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "test", inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = IR_VERSION
        return model


#: Feature tensors the loader should pick for the model below (see ``_arcface_like``).
EXPECTED_FEATURES = ["add56", "add28", "prelu14", "bn7"]


def _arcface_like(mxnet_prefix: bool = False, seed: int = 0) -> onnx.ModelProto:
    """An iresnet-like graph with ArcFace's signature: 'input.1' (N, 3, 112, 112) -> '683' (N, 512).

    Stages: 56 px (residual Add), 28 px (residual Add), 14 px (no Add), 7 px, then Flatten, Gemm
    and a 1-D BatchNormalization, as insightface's exports end. ``mxnet_prefix`` starts it with
    the Sub/Mul normalisation MXNet-converted models carry.
    """
    g = _GraphBuilder(seed)
    x = "input.1"
    if mxnet_prefix:
        x = g.node("Sub", [x, g.init("mean", np.full((1, 1, 1, 1), 127.5, np.float32))], "minus")
        x = g.node("Mul", [x, g.init("mulscalar", np.full((1, 1, 1, 1), 0.0078125, np.float32))], "mul")
    a = g.prelu(g.bn(g.conv(x, 3, 8, 2, "conv56"), 8, "bn56"), 8, "prelu56")
    g.node("Add", [a, g.bn(g.conv(a, 8, 8, 1, "conv56b"), 8, "bn56b")], "add56")
    c = g.prelu(g.bn(g.conv("add56", 8, 16, 2, "conv28"), 16, "bn28"), 16, "prelu28")
    g.node("Add", [c, g.bn(g.conv(c, 16, 16, 1, "conv28b"), 16, "bn28b")], "add28")
    e = g.prelu(g.bn(g.conv("add28", 16, 16, 2, "conv14"), 16, "bn14"), 16, "prelu14")
    f = g.bn(g.conv(e, 16, 16, 2, "conv7"), 16, "bn7")
    flat = g.node("Flatten", [f], "flat", axis=1)
    fc_w = g.rng.normal(0, math.sqrt(1.0 / 784), (512, 784)).astype(np.float32)
    fc = g.node("Gemm", [flat, g.init("fc.w", fc_w), g.init("fc.b", np.zeros(512, np.float32))], "fc", transB=1)
    g.bn(fc, 512, "683")
    return g.model(
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
    )


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _ort_outputs(model: onnx.ModelProto, x: np.ndarray, extra_outputs: list[str] = ()) -> list[np.ndarray]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for name in extra_outputs:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def arcface_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(_arcface_like(), tmp_path_factory.mktemp("arcface") / "w600k_test.onnx")


@pytest.fixture(scope="module")
def arcface(arcface_path: Path) -> ArcFaceNetwork:
    return load_arcface(arcface_path, backend="builtin")


def _chips(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0, 1, (batch, 3, 112, 112)).astype(np.float32))


# --------------------------------------------------------------------------------------------
# ArcFace: conversion against onnxruntime.


def test_arcface_matches_onnxruntime(arcface: ArcFaceNetwork, arcface_path: Path) -> None:
    chips = _chips()
    with torch.no_grad():
        embedding = arcface.embed(chips).numpy()
    # insightface feeds RGB planes (pixel - 127.5) / 127.5, i.e. 2 * chip - 1 for chips in [0, 1].
    (reference,) = _ort_outputs(onnx.load(str(arcface_path)), (chips.numpy() * 255.0 - 127.5) / 127.5)
    assert embedding.shape == (2, 512) == reference.shape
    assert np.abs(reference).max() > 0.5  # a non-trivial output to compare
    np.testing.assert_allclose(embedding, reference, rtol=0, atol=2e-5)
    assert arcface.name == "arcface:w600k_test.onnx"
    assert arcface.chip_size == CHIP_SIZE and arcface.embedding_dim == 512
    assert (arcface.input_mean, arcface.input_std, arcface.backend) == (127.5, 127.5, "builtin")


def test_arcface_features_are_stage_outputs(arcface: ArcFaceNetwork, arcface_path: Path) -> None:
    assert list(arcface.feature_names) == EXPECTED_FEATURES
    chips = _chips(batch=1, seed=2)
    with torch.no_grad():
        embedding, features = arcface.features(chips)
    reference = _ort_outputs(onnx.load(str(arcface_path)), chips.numpy() * 2.0 - 1.0, EXPECTED_FEATURES)
    assert [tuple(f.shape) for f in features] == [(1, 8, 56, 56), (1, 16, 28, 28), (1, 16, 14, 14), (1, 16, 7, 7)]
    for got, want in zip([embedding, *features], reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)


def test_arcface_named_features(arcface_path: Path) -> None:
    network = load_arcface(arcface_path, backend="builtin", feature_names=["prelu28"])
    _, features = network.features(_chips(batch=1))
    assert [tuple(f.shape) for f in features] == [(1, 16, 28, 28)]
    with pytest.raises(ModelDataError, match="nosuch"):
        load_arcface(arcface_path, backend="builtin", feature_names=["nosuch"])


def test_arcface_is_frozen_and_differentiable(arcface: ArcFaceNetwork) -> None:
    assert all(not p.requires_grad for p in arcface.parameters())
    assert all(not b.requires_grad for b in arcface.buffers())
    arcface.train()
    assert not arcface.training  # stays in eval mode: stored batch-norm statistics
    chips = _chips(batch=2, seed=3).requires_grad_(True)
    embedding, features = arcface.features(chips)
    (F.normalize(embedding, dim=1)[0] @ F.normalize(embedding, dim=1)[1] + features[0].square().mean()).backward()
    assert chips.grad is not None and torch.isfinite(chips.grad).all() and chips.grad.abs().sum() > 0


def test_arcface_gradient_matches_finite_difference(arcface_path: Path) -> None:
    network = load_arcface(arcface_path, backend="builtin").double()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 112, 112, dtype=torch.float64, generator=generator)
    direction = torch.randn(x.shape, dtype=torch.float64, generator=generator)
    weights = torch.randn(512, dtype=torch.float64, generator=generator)

    def f(chips: torch.Tensor) -> torch.Tensor:
        return network.embed(chips)[0] @ weights

    x.requires_grad_(True)
    f(x).backward()
    analytic = float((x.grad * direction).sum())
    h = 1e-6
    with torch.no_grad():
        numeric = float((f(x + h * direction) - f(x - h * direction)) / (2 * h))
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_arcface_is_an_identity_network(arcface: ArcFaceNetwork) -> None:
    assert isinstance(arcface, IdentityNetwork)
    with pytest.raises(ValueError, match="112"):
        arcface.embed(torch.zeros(1, 3, 150, 150))


def test_mxnet_style_model_takes_raw_pixels(tmp_path: Path) -> None:
    model = _arcface_like(mxnet_prefix=True)
    network = load_arcface(_save(model, tmp_path / "mx.onnx"), backend="builtin")
    assert (network.input_mean, network.input_std) == (0.0, 1.0)
    chips = _chips(batch=1, seed=4)
    (reference,) = _ort_outputs(model, chips.numpy() * 255.0)
    with torch.no_grad():
        np.testing.assert_allclose(network.embed(chips).numpy(), reference, rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------
# Each supported operator against onnxruntime, on small graphs.


def _op_case(name: str) -> tuple[onnx.ModelProto, np.ndarray]:
    g = _GraphBuilder(seed=hash(name) % 1000)
    r = g.rng
    f32 = np.float32
    vi = helper.make_tensor_value_info
    if name == "conv_asymmetric_group_dilation":
        x = r.normal(size=(2, 4, 9, 11)).astype(f32)
        g.node("Conv", ["x", g.init("w", r.normal(size=(6, 2, 3, 3)).astype(f32))], "y",
               group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])
    elif name == "conv_same_upper":
        x = r.normal(size=(1, 3, 10, 10)).astype(f32)
        g.node("Conv", ["x", g.init("w", r.normal(size=(4, 3, 3, 3)).astype(f32)),
                        g.init("b", r.normal(size=4).astype(f32))], "y", strides=[2, 2], auto_pad="SAME_UPPER")
    elif name == "conv_same_lower":
        x = r.normal(size=(1, 3, 9, 9)).astype(f32)
        g.node("Conv", ["x", g.init("w", r.normal(size=(2, 3, 4, 4)).astype(f32))], "y", auto_pad="SAME_LOWER")
    elif name == "maxpool_globalpool":
        x = r.normal(size=(1, 2, 9, 9)).astype(f32)
        g.node("MaxPool", ["x"], "p", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0])
        g.node("Concat", [g.node("GlobalAveragePool", ["p"], "gp"), g.node("GlobalAveragePool", ["x"], "gx")], "y", axis=1)
    elif name == "elementwise":
        x = r.normal(size=(2, 3, 4, 5)).astype(f32)
        s = g.node("Sub", ["x", g.init("c", r.normal(size=(3, 1, 1)).astype(f32))], "s")
        m = g.node("Mul", [s, g.init("k", r.uniform(0.5, 2, size=(1, 5)).astype(f32))], "m")
        d = g.node("Div", [m, g.init("q", r.uniform(0.5, 2, size=(4, 1)).astype(f32))], "d")
        relu = g.node("Relu", [d], "r")
        leaky = g.node("LeakyRelu", [d], "l", alpha=0.2)
        sig = g.node("Sigmoid", [g.node("Identity", [leaky], "i")], "sg")
        drop = g.node("Dropout", [g.node("Add", [relu, sig], "a")], "dr")
        g.node("PRelu", [drop, g.init("slope", np.array([0.3], f32))], "y")
    elif name == "transpose_matmul_concat":
        x = r.normal(size=(2, 3, 4)).astype(f32)
        t = g.node("Transpose", ["x"], "t", perm=[0, 2, 1])
        a = g.node("MatMul", [t, g.init("w1", r.normal(size=(3, 5)).astype(f32))], "a")
        b = g.node("MatMul", [t, g.init("w2", r.normal(size=(3, 2)).astype(f32))], "b")
        g.node("Transpose", [g.node("Concat", [a, b], "c", axis=-1)], "y")
    elif name == "gemm_flags":
        x = r.normal(size=(6, 2)).astype(f32)
        g.node("Gemm", ["x", g.init("b", r.normal(size=(4, 6)).astype(f32)), g.init("c", r.normal(size=(4,)).astype(f32))],
               "y", transA=1, transB=1, alpha=0.5, beta=2.0)
    elif name == "shape_gather_unsqueeze_reshape":
        x = r.normal(size=(2, 3, 4, 4)).astype(f32)
        shape = g.node("Shape", ["x"], "shape")
        batch = g.node("Gather", [shape, g.init("zero", np.array(0, np.int64))], "batch", axis=0)
        batch1 = g.node("Unsqueeze", [batch, g.init("axes0", np.array([0], np.int64))], "batch1")
        g.nodes.append(helper.make_node("Constant", [], ["minus1"], name="const",
                                        value=numpy_helper.from_array(np.array([-1], np.int64))))
        target = g.node("Concat", [batch1, "minus1"], "target", axis=0)
        flat = g.node("Reshape", ["x", target], "flat")
        g.node("Squeeze", [g.node("Unsqueeze", [flat, g.init("axes1", np.array([1], np.int64))], "u")], "y")
    elif name == "reshape_zero_flatten_constants":
        x = r.normal(size=(2, 3, 4)).astype(f32)
        reshaped = g.node("Reshape", ["x", g.init("shape", np.array([0, -1, 2], np.int64))], "rs")
        flat = g.node("Flatten", [reshaped], "fl", axis=-1)
        g.nodes.append(helper.make_node("Constant", [], ["cf"], name="cf", value_float=0.5))
        g.nodes.append(helper.make_node("Constant", [], ["cfs"], name="cfs", value_floats=[1.0, 2.0]))
        g.node("Add", [g.node("Mul", [flat, "cf"], "half"), "cfs"], "y")
    elif name == "batchnorm_1d":
        x = r.normal(size=(3, 7)).astype(f32)
        g.bn("x", 7, "y")
    else:
        raise AssertionError(name)
    model = g.model([vi("x", TensorProto.FLOAT, list(x.shape))], [helper.make_empty_tensor_value_info("y")])
    return model, x


OP_CASES = [
    "conv_asymmetric_group_dilation",
    "conv_same_upper",
    "conv_same_lower",
    "maxpool_globalpool",
    "elementwise",
    "transpose_matmul_concat",
    "gemm_flags",
    "shape_gather_unsqueeze_reshape",
    "reshape_zero_flatten_constants",
    "batchnorm_1d",
]


@pytest.mark.parametrize("case", OP_CASES)
def test_builtin_operator_matches_onnxruntime(case: str) -> None:
    model, x = _op_case(case)
    (reference,) = _ort_outputs(model, x)
    (got,) = OnnxGraphModule(model)(torch.from_numpy(x))
    assert tuple(got.shape) == reference.shape
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-5, atol=1e-5)


def test_operator_cases_cover_every_supported_operator() -> None:
    used = {node.op_type for case in OP_CASES for node in _op_case(case)[0].graph.node}
    assert used == set(SUPPORTED_OPS)


# --------------------------------------------------------------------------------------------
# Errors: one line, naming the file and what is wrong.


def _assert_one_line(error: pytest.ExceptionInfo[BaseException], *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


def test_unsupported_operators_are_named(tmp_path: Path) -> None:
    g = _GraphBuilder()
    g.node("Softmax", ["input.1"], "soft", axis=1)
    g.nodes.append(helper.make_node("Fancy", ["soft"], ["fancy"], name="fancy", domain="com.example"))
    g.node("Flatten", ["fancy"], "emb")
    model = g.model(
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 37632])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = _save(model, tmp_path / "odd.onnx")
    with pytest.raises(ModelDataError) as error:
        load_arcface(path, backend="builtin")
    _assert_one_line(error, str(path), "Softmax", "com.example.Fancy")


def test_non_onnx_files_are_refused(tmp_path: Path) -> None:
    for content in (b"this is not a model\n", bytes(range(256)) * 4, b""):
        path = tmp_path / "model.onnx"
        path.write_bytes(content)
        with pytest.raises(ModelDataError) as error:
            load_arcface(path, backend="builtin")
        _assert_one_line(error, str(path), "not an ONNX model")
    with pytest.raises(ModelDataError) as error:
        load_arcface(tmp_path / "missing.onnx")
    _assert_one_line(error, "missing.onnx", "not found")


def test_wrong_signature_is_refused(tmp_path: Path) -> None:
    g = _GraphBuilder()
    g.node("Relu", ["input.1"], "y")
    model = g.model(
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 64, 64])],
    )
    path = _save(model, tmp_path / "gray.onnx")
    with pytest.raises(ModelDataError) as error:
        load_arcface(path)
    _assert_one_line(error, str(path), "(B, 3, S, S)")


# --------------------------------------------------------------------------------------------
# onnx2torch wiring (it cannot be installed here: its torchvision needs a CUDA torch build).


def test_onnx2torch_is_used_when_it_imports(arcface_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def convert(model: onnx.ModelProto) -> torch.nn.Module:
        seen.append([o.name for o in model.graph.output])
        module = OnnxGraphModule(model)
        for buffer_name, buffer in list(module.named_buffers()):  # like onnx2torch: real parameters
            if buffer.is_floating_point():
                delattr(module, buffer_name)
                setattr(module, buffer_name, torch.nn.Parameter(buffer))
        return module

    monkeypatch.setitem(sys.modules, "onnx2torch", types.SimpleNamespace(convert=convert))
    network = load_arcface(arcface_path)
    assert network.backend == "onnx2torch"
    assert seen == [["683", *EXPECTED_FEATURES]]  # features travel as extra graph outputs
    assert all(not p.requires_grad for p in network.parameters())
    reference = load_arcface(arcface_path, backend="builtin")
    chips = _chips(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(network.embed(chips), reference.embed(chips))


def test_onnx2torch_failures(arcface_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(model: onnx.ModelProto) -> torch.nn.Module:
        raise NotImplementedError("Converter is not implemented (OperationDescription(domain='', op_type='X'))")

    monkeypatch.setitem(sys.modules, "onnx2torch", types.SimpleNamespace(convert=convert))
    assert load_arcface(arcface_path).backend == "builtin"  # auto falls back
    with pytest.raises(ModelDataError) as error:
        load_arcface(arcface_path, backend="onnx2torch")
    _assert_one_line(error, "onnx2torch could not convert")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import fails
    assert load_arcface(arcface_path).backend == "builtin"
    with pytest.raises(GanfitError, match="not importable"):
        load_arcface(arcface_path, backend="onnx2torch")


# --------------------------------------------------------------------------------------------
# Alignment: five points, Umeyama, chip transform, chip cutting.


def _rotation(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _landmarks_with_five_points(five: np.ndarray, seed: int = 0) -> np.ndarray:
    """68 points whose five alignment points are ``five``; the rest random."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 400, (68, 2))
    ring = np.array([[-6.0, 0.0], [-3.0, -2.0], [3.0, -2.0], [6.0, 0.0], [3.0, 2.0], [-3.0, 2.0]])  # mean zero
    points[36:42] = five[0] + ring
    points[42:48] = five[1] + ring * 1.3
    points[30], points[48], points[54] = five[2], five[3], five[4]
    return points


def test_five_points_order() -> None:
    five = np.array([[10.0, 20.0], [30.0, 21.0], [20.0, 30.0], [12.0, 40.0], [28.0, 41.0]])
    np.testing.assert_allclose(five_points_from_ibug68(_landmarks_with_five_points(five)), five, atol=1e-12)


def test_chip_transform_recovers_a_similarity(arcface: ArcFaceNetwork) -> None:
    scale, degrees, shift = 2.3, 17.0, np.array([140.0, 95.0])
    chip_to_image = np.concatenate([scale * _rotation(degrees), shift[:, None]], axis=1)
    five = apply_affine(chip_to_image, ARCFACE_TEMPLATE)
    transform = arcface.chip_transform(_landmarks_with_five_points(five))
    np.testing.assert_allclose(transform, chip_to_image, atol=1e-9)
    np.testing.assert_allclose(apply_affine(invert_affine(transform), five), ARCFACE_TEMPLATE, atol=1e-9)
    # The template's first point is the image-left eye: a frontal upright face keeps it left.
    assert ARCFACE_TEMPLATE[0, 0] < ARCFACE_TEMPLATE[1, 0] and ARCFACE_TEMPLATE[3, 0] < ARCFACE_TEMPLATE[4, 0]
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963])  # as published (chip indices)


def test_template_scaling_follows_insightface() -> None:
    np.testing.assert_allclose(arcface_template(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE * 2)
    np.testing.assert_allclose(arcface_template(128), ARCFACE_TEMPLATE + [8.0, 0.0])


def test_similarity_matches_scikit_image_and_never_reflects() -> None:
    transform_module = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(5)
    for _ in range(20):
        src = rng.uniform(0, 200, (5, 2))
        dst = src @ (1.7 * _rotation(rng.uniform(-60, 60))).T + rng.normal(0, 4, (5, 2)) + 30
        if hasattr(transform_module.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            reference = transform_module.SimilarityTransform.from_estimate(src, dst)
        else:
            reference = transform_module.SimilarityTransform()
            assert reference.estimate(src, dst)
        np.testing.assert_allclose(similarity_transform(src, dst), reference.params[:2], atol=1e-8)
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    linear = similarity_transform(ARCFACE_TEMPLATE, mirrored)[:, :2]
    assert np.linalg.det(linear) > 0
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def _sample_chip(images: torch.Tensor, transform: np.ndarray, size: int) -> torch.Tensor:
    """Bilinear chip: image position = transform @ (u, v, 1) for chip pixel indices (u, v), as
    ``face.alignment.ChipWarp`` reads it; image pixel (i, j) covers [j, j+1) x [i, i+1)."""
    _, _, height, width = images.shape
    index = torch.arange(size, dtype=torch.float64)
    v, u = torch.meshgrid(index, index, indexing="ij")
    xy = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.from_numpy(transform).T
    grid = (xy / torch.tensor([width / 2.0, height / 2.0]) - 1.0)[None].to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_chip_puts_the_five_points_on_the_template(arcface: ArcFaceNetwork) -> None:
    chip_to_image = np.concatenate([2.1 * _rotation(-24.0), np.array([[60.0], [150.0]])], axis=1)
    five = apply_affine(chip_to_image, ARCFACE_TEMPLATE)
    height, width = 420, 380
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres, corner origin
    image = np.zeros((height, width))
    for x, y in five:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0**2))
    images = torch.from_numpy(np.stack([image] * 3)[None]).float().requires_grad_(True)
    transform = arcface.chip_transform(_landmarks_with_five_points(five))
    chip = _sample_chip(images, transform, arcface.chip_size)
    assert tuple(chip.shape) == (1, 3, 112, 112)
    values = chip[0, 0].detach().numpy()
    cy, cx = np.mgrid[0:112, 0:112].astype(np.float64)  # chip pixel indices
    for point in ARCFACE_TEMPLATE:
        near = (cx - point[0]) ** 2 + (cy - point[1]) ** 2 < 6.0**2
        weights = values * near
        centroid = np.array([(weights * cx).sum(), (weights * cy).sum()]) / weights.sum()
        np.testing.assert_allclose(centroid, point, atol=0.05)
    chip.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_chip_equals_insightface_style_crop(arcface: ArcFaceNetwork) -> None:
    """insightface's norm_crop, done in OpenCV's convention (pixel centres on integers in photo
    and chip, bilinear warp), gives the same chip as sampling through chip_transform."""
    transform_module = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(11)
    photo = rng.uniform(0, 1, (240, 260, 3))
    five = apply_affine(np.concatenate([1.6 * _rotation(12.0), [[70.0], [40.0]]], axis=1), ARCFACE_TEMPLATE)
    five += rng.normal(0, 2.0, five.shape)  # not an exact similarity: the least-squares direction matters
    image_to_chip_cv = similarity_transform(five - 0.5, ARCFACE_TEMPLATE)  # OpenCV convention
    warp = transform_module.AffineTransform(np.vstack([image_to_chip_cv, [0.0, 0.0, 1.0]]))
    reference = transform_module.warp(photo, warp.inverse, output_shape=(112, 112), order=1, cval=0.0)
    images = torch.from_numpy(photo).permute(2, 0, 1)[None]
    chip = _sample_chip(images, arcface.chip_transform(_landmarks_with_five_points(five)), 112)
    np.testing.assert_allclose(chip[0].permute(1, 2, 0).numpy(), reference, atol=1e-9)


# --------------------------------------------------------------------------------------------
# FAN: TorchScript modules with FAN's signature.


class _FixedHeatmaps(torch.nn.Module):
    """Returns stored heatmaps whatever the (1, 3, 256, 256) input."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("maps", maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 256 and x.shape[3] == 256
        return self.maps.expand(x.shape[0], -1, -1, -1)


class _RedHeatmaps(torch.nn.Module):
    """Every landmark's heatmap is the crop's red channel averaged over 4x4 cells."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, 0:1], 4).expand(-1, 68, -1, -1)


def _save_script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # deprecated in recent torch, but it is how FAN ships
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


def test_fan_decodes_peaks_through_the_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    maps = np.zeros((68, 64, 64), np.float32)
    cells = rng.integers(1, 63, (68, 2))  # (col, row), inside the border
    cells[0] = (0, 40)  # on the border: no quarter-pixel move
    shifts = rng.choice([-1, 0, 1], (68, 2))
    shifts[0] = 0
    for k, ((col, row), (sx, sy)) in enumerate(zip(cells, shifts)):
        maps[k, row, col] = 1.0
        if sx:
            maps[k, row, col + sx] = 0.5
        if sy:
            maps[k, row + sy, col] = 0.4
    maps[0, 40, 1] = 0.5  # the border landmark has a neighbour that would move it if it were inside
    path = _save_script(_FixedHeatmaps(torch.from_numpy(maps)[None]), tmp_path / "2DFAN4-test.zip")
    fan = FanLandmarks(path)
    box = FaceBox(210.0, 130.0, 350.0, 300.0)
    photo = np.zeros((480, 640, 3), np.uint8)
    landmarks, scores = fan.landmarks_with_scores(photo, box)
    square = fan_crop(box)
    assert square.side == pytest.approx(200 * (140 + 170) / 195)
    assert (square.center_x, square.center_y) == pytest.approx((280.0, 215.0 - 0.12 * 170))
    expected = square.center_x - square.side / 2 + (cells[:, 0] + 0.5 + 0.25 * shifts[:, 0]) * square.side / 64
    expected_y = square.center_y - square.side / 2 + (cells[:, 1] + 0.5 + 0.25 * shifts[:, 1]) * square.side / 64
    assert landmarks.shape == (68, 2) and landmarks.dtype == np.float32
    np.testing.assert_allclose(landmarks[:, 0], expected, atol=1e-3)
    np.testing.assert_allclose(landmarks[:, 1], expected_y, atol=1e-3)
    np.testing.assert_allclose(scores, 1.0)
    np.testing.assert_allclose(fan.landmarks(photo, box), landmarks)


def test_fan_input_crop_is_rgb_and_aligned(tmp_path: Path) -> None:
    fan = FanLandmarks(_save_script(_RedHeatmaps(), tmp_path / "red.zip"))
    # A box whose crop is exactly 256 px with its corner on pixel (34, 20): one photo pixel per
    # crop pixel, so a 4x4 photo block is one heatmap cell.
    box = FaceBox(99.6, 100.576, 224.4, 225.376)
    square = fan_crop(box)
    assert square.side == pytest.approx(FAN_INPUT_SIZE)
    assert (square.center_x - 128, square.center_y - 128) == pytest.approx((34.0, 20.0))
    photo = np.zeros((300, 320, 3), np.uint8)
    photo[120:124, 154:158, 0] = 255  # red block: heatmap cell (col 30, row 25)
    photo[120:124, 158:162, 0] = 128  # dimmer block to its right: moves the peak +0.25 cell = +1 px
    photo[60:64, 60:64, 2] = 255  # a blue block, which a BGR input would put in the red plane
    inputs, _ = fan.crop(photo, box)
    assert tuple(inputs.shape) == (1, 3, 256, 256) and float(inputs.max()) == pytest.approx(1.0, abs=1e-4)
    landmarks = fan.landmarks(photo, box)
    np.testing.assert_allclose(landmarks, np.tile([[157.0, 122.0]], (68, 1)), atol=1e-3)


def test_fan_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelDataError) as error:
        FanLandmarks(tmp_path / "missing.zip")
    _assert_one_line(error, "missing.zip", "not found")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(ModelDataError) as error:
        FanLandmarks(junk)
    _assert_one_line(error, str(junk), "not a TorchScript model")
    wrong = FanLandmarks(_save_script(_FixedHeatmaps(torch.zeros(1, 5, 64, 64)), tmp_path / "five.zip"))
    with pytest.raises(ModelDataError) as error:
        wrong.landmarks(np.zeros((100, 100, 3), np.uint8), FaceBox(10, 10, 90, 90))
    _assert_one_line(error, "five.zip", "(1, 68, h, w)")


def test_heatmap_peaks_ties_and_borders() -> None:
    maps = np.zeros((3, 64, 64), np.float32)
    maps[0, 10, 20] = 1.0  # isolated: neighbours tie, no move
    maps[1, 63, 5], maps[1, 62, 5] = 1.0, 0.9  # bottom border: no move
    maps[2, 30, 30], maps[2, 30, 29], maps[2, 31, 30] = 1.0, 0.2, 0.1
    points, scores = heatmap_peaks(maps)
    np.testing.assert_allclose(points, [[20.5, 10.5], [5.5, 63.5], [30.25, 30.75]])
    np.testing.assert_allclose(scores, 1.0)
