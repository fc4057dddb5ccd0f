"""Fine detail for the PCA-latent texture GAN (paper 3.1; the stage is our addition).

Why: the PCA-latent GAN (``GanConfig.detail=False``) draws maps in the span of its principal
components, so it holds no detail finer than PCA's -- measured: sample sharpness 0.24-0.61 where
UTKFace UV maps have 2.6-2.8, and fits blurrier than PCA-96's (docs/texture-model.md). The paper's
GAN draws detail with convolutions at full resolution; training those with an image
discriminator at 256 px did not fit a CPU's budget (docs: runs 1-3 made artefacts, not detail).

This stage adds the detail after the GAN is trained: a small fully convolutional generator sees
the coarse map (what the PCA-latent GAN drew), each texel's place in the UV layout and a noise
map, and outputs a residual that is high-passed by construction (its own low-pass removed), so it
sharpens edges and adds texture without moving the colouring the latent code chose. A patch
discriminator judges ``(coarse, coarse + residual)`` pairs against the training maps paired with
their projection onto the GAN's components (the real residual high-passed the same way).
Training on patches costs minutes on a CPU. Fitting differentiates through it like the rest of
the generator (``GanTextureModel.decode``), with a fixed noise map, so decoding is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DetailConfig", "DetailNetwork", "PatchDiscriminator", "layout_coordinates", "high_pass"]


@dataclass(frozen=True)
class DetailConfig:
    """Architecture of the detail stage; ``resolution`` is the GAN's output size."""

    resolution: int = 256
    channels: int = 32
    layers: int = 5
    #: The residual keeps only what is finer than this many texels across the map: its own
    #: area-downsampling to ``cutoff`` px, upsampled back, is subtracted.
    cutoff: int = 64
    #: Typical size of the real residual in the networks' [-1, 1] units (its standard deviation
    #: on the UTKFace set: 0.047 in the face region, 0.023 elsewhere). The generator works in
    #: these units and the discriminator sees the residual divided by it: at its raw size the
    #: discriminator's default initialisation could not tell real from generated for 50 steps.
    residual_scale: float = 0.05
    #: Seed of the fixed noise map ``decode`` uses (fitting must be deterministic).
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.channels < 1 or self.layers < 2:
            raise ValueError(f"detail network needs channels >= 1 and layers >= 2, got {self.channels}, {self.layers}")
        if not 1 <= self.cutoff <= self.resolution or self.resolution % self.cutoff:
            raise ValueError(f"detail cutoff must divide the resolution {self.resolution}, got {self.cutoff}")

    @property
    def factor(self) -> int:
        """Texels per low-pass cell; patches are cut at multiples of it."""
        return self.resolution // self.cutoff

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DetailConfig:
        values = json.loads(text)
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def _kaiming(module: nn.Module) -> nn.Module:
    """He initialisation for leaky-ReLU(0.2) layers: PyTorch's default shrinks the signal about
    threefold per layer, and the discriminator so initialised still could not tell the
    generator's speckles from real detail after 650 steps (logits +0.01 / -0.01)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(layer.bias)
    return module


def layout_coordinates(size: int) -> torch.Tensor:
    """``(2, size, size)``: where a texel lies in the UV layout, as ``|2u - 1|`` and ``2v - 1``.
    The layout's left and right halves are mirror images, so the distance from the middle column
    (not u itself) is what a texel's detail may depend on; a mirrored map stays a valid input."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    u = centres.abs()[None, :].expand(size, size)
    v = (-centres)[:, None].expand(size, size)  # row 0 is v = 1
    return torch.stack([u, v])


def high_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x`` minus its mean over ``factor``-texel cells, upsampled back bilinearly. Exact on any
    patch whose origin and size are multiples of ``factor`` (up to the bilinear border)."""
    if factor <= 1:
        return x
    low = F.avg_pool2d(x, factor)
    return x - F.interpolate(low, scale_factor=float(factor), mode="bilinear", align_corners=False)


class DetailNetwork(nn.Module):
    """``coarse (B, 3, S, S)`` in [-1, 1] -> high-passed residual, same shape. Fully convolutional:
    trained on patches (``patch``), applied to whole maps (``forward``)."""

    noise_map: torch.Tensor
    coordinates: torch.Tensor

    def __init__(self, config: DetailConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels_in = 3 + 2 + 1  # coarse RGB, layout coordinates, noise
        for _ in range(config.layers - 1):
            layers += [nn.Conv2d(channels_in, config.channels, 3, padding=1), nn.LeakyReLU(0.2)]
            channels_in = config.channels
        self.body = _kaiming(nn.Sequential(*layers))
        self.to_rgb = _kaiming(nn.Conv2d(channels_in, 3, 3, padding=1))
        with torch.no_grad():  # start close to "no detail": the coarse map itself
            self.to_rgb.weight.mul_(0.1)
        gen = torch.Generator().manual_seed(config.noise_seed)
        size = config.resolution
        self.register_buffer("noise_map", torch.randn(1, 1, size, size, generator=gen), persistent=False)
        self.register_buffer("coordinates", layout_coordinates(size)[None], persistent=False)

    def patch(self, coarse: torch.Tensor, coordinates: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The residual of a patch, given its coordinates ``(B, 2, P, P)`` and noise ``(B, 1, P, P)``."""
        x = torch.cat([coarse, coordinates.expand(coarse.shape[0], -1, -1, -1), noise], dim=1)
        return high_pass(self.to_rgb(self.body(x)), self.config.factor) * self.config.residual_scale

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        """The residual of whole maps at the configured resolution, with the fixed noise map."""
        if coarse.shape[-1] != self.config.resolution or coarse.shape[-2] != self.config.resolution:
            raise ValueError(f"detail network expects {self.config.resolution} px maps, got {tuple(coarse.shape)}")
        batch = coarse.shape[0]
        return self.patch(coarse, self.coordinates, self.noise_map.expand(batch, -1, -1, -1))


class PatchDiscriminator(nn.Module):
    """``(coarse, residual)`` patch pairs plus their coordinates -> a grid of logits (one per ~8x8
    texels): is ``coarse + residual`` a real map, given the coarse map it projects to? The residual
    comes in ``DetailConfig.residual_scale`` units."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels

        def down(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]

        self.net = _kaiming(nn.Sequential(nn.Conv2d(3 + 3 + 2, c, 3, padding=1), nn.LeakyReLU(0.2),
                                          *down(c, 2 * c), *down(2 * c, 4 * c), *down(4 * c, 4 * c),
                                          nn.Conv2d(4 * c, 1, 3, padding=1)))

    def forward(self, coarse: torch.Tensor, residual: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        x = torch.cat([coarse, residual, coordinates.expand(residual.shape[0], -1, -1, -1)], dim=1)
        return self.net(x)


def detail_arrays(network: DetailNetwork) -> dict[str, np.ndarray]:
    """The network as ``detail/...`` entries of a GAN export (float16 weights)."""
    arrays: dict[str, np.ndarray] = {"detail/config": np.array(network.config.to_json())}
    for name, tensor in network.state_dict().items():
        arrays[f"detail/param/{name}"] = tensor.detach().cpu().numpy().astype(np.float16)
    return arrays


def detail_from_arrays(data: Any) -> DetailNetwork | None:
    """The detail network stored in an opened GAN export, or None if it has none."""
    if "detail/config" not in data.files:
        return None
    network = DetailNetwork(DetailConfig.from_json(str(data["detail/config"])))
    prefix = "detail/param/"
    state = {k[len(prefix):]: torch.from_numpy(data[k].astype(np.float32)) for k in data.files if k.startswith(prefix)}
    network.load_state_dict(state)
    return network.requires_grad_(False).eval()
