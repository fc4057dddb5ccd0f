"""StyleGAN2-style UV texture generator and discriminator (paper 3.1), and the fitting-side model.

Why StyleGAN2 rather than the paper's progressive GAN: it trains at full resolution from the
start (no growing schedule to resume mid-phase), its W space is a better-behaved latent for
fitting than Z, and its pieces are small. What is kept from Karras et al. 2020 (written here from
the paper's description, not copied):

- mapping network: ``z`` normalised to unit second moment, ``mapping_layers`` fully connected
  layers with a 0.01 learning-rate multiplier, giving ``w``; the running mean ``w_avg`` is tracked
  for truncation and as the fitting's start.
- synthesis: a learned 4x4 constant, then per resolution two 3x3 modulated convolutions
  (style = affine(w), weights demodulated so each output feature has unit expected variance),
  optional per-pixel noise with a learned strength, and a skip architecture: a 1x1 modulated
  ``toRGB`` per resolution whose output is upsampled and summed. Up-sampling is bilinear x2,
  which is exactly StyleGAN2's [1, 3, 3, 1] FIR up-sampling filter, followed by the 3x3 conv.
  Modulation is applied to activations and demodulation as a per-sample output scale (the
  "non-fused" form): the same function as the grouped-convolution form, with plain convolutions
  that run well on CPU, CUDA and under autocast.
- discriminator: residual blocks (two 3x3 convs, 2x2 average-pooled 1x1 shortcut, sum scaled by
  1/sqrt 2), minibatch standard deviation at 4x4, then conv, fc, fc.
- equalised learning rate everywhere (weights drawn N(0, 1), scaled by He's constant at run time),
  leaky ReLU 0.2 with gain sqrt 2.

Left out: path-length regularisation, adaptive augmentation, fp16 clamping (autocast uses bf16).
Images are in [-1, 1] inside the networks; ``GanTextureModel`` maps to [0, 1] textures.

Exported weights (``save_generator``): ``.npz``, no pickle, ``kind="gan"``, the generator's
parameters and buffers as float16 under ``param/<name>``, its config as JSON, and a Gaussian fitted
to ``w = mapping(z)`` (``w_mean``, ``w_cov``) for the W-space prior.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganfit.errors import ModelDataError
from ganfit.io.atomic import atomic_savez
from ganfit.models.limits import check_npz
from ganfit.texture.detail import DetailNetwork, detail_from_arrays

__all__ = [
    "CoefficientDiscriminator",
    "Discriminator",
    "GanConfig",
    "GanTextureModel",
    "Generator",
    "NoiseMode",
    "fit_w_gaussian",
    "make_discriminator",
    "save_generator",
]

log = logging.getLogger(__name__)

#: 1: float16 parameters; 2: the PCA components (``pca_base``) as int8 with one scale per
#: component (``q8/`` and ``q8scale/`` entries). Files without components are still written as 1.
#: 3: a detail stage beside the generator (``detail/`` entries, ``train-texture-detail --export``).
FORMAT_VERSION = 3
#: Stored as int8: 200 components at 256 px are 78 MB as float16, 39 MB as int8 (~15 MB in the
#: compressed .npz the exporters write).
_QUANTISED = ("synthesis.pca_basis",)
NoiseMode = Literal["random", "const", "none"]
LatentSpace = Literal["w", "z"]
_LRELU_GAIN = math.sqrt(2.0)
#: Exported weights should stay below this (the issue's limit for shipping them).
MAX_EXPORT_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class GanConfig:
    """Architecture of generator and discriminator (both from one config)."""

    resolution: int = 256
    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 4
    mapping_lr_mult: float = 0.01
    #: Feature maps at resolution r: ``min(channel_base // r, channel_max)``.
    channel_base: int = 8192
    channel_max: int = 256
    #: Per-pixel noise inputs (fine detail such as pores); off makes the generator deterministic.
    noise: bool = True
    mbstd_group: int = 4
    #: Add a fixed image to the synthesis output: the training set's mean map, set once when
    #: training starts. The adversarial game then learns deviations from the mean instead of the
    #: mean itself first -- what matters when training time is short (a CPU run).
    mean_offset: bool = False
    #: A linear layer beside the synthesis network: ``pca_base`` principal components of the
    #: training maps (computed once when training starts, stored at ``pca_base_resolution`` --
    #: upsampled when that is below the output's), weighted by a learned affine map of the first style
    #: ``w``. The convolutional synthesis then learns what PCA cannot (detail, and the
    #: non-Gaussian part of the colouring) instead of first re-learning the colouring PCA gets in
    #: closed form. Needs ``mean_offset`` (the components are deviations from the mean). 0 = off,
    #: the plain StyleGAN2 generator. Why: a 2-core CPU run of the plain generator was still
    #: behind the PCA model after 38k images (docs/texture-model.md).
    pca_base: int = 0
    pca_base_resolution: int = 256
    #: With ``pca_base``, the convolutional synthesis only adds detail: its output minus its own
    #: low-pass (area-downsampled to ``detail_cutoff`` px and upsampled back), so colouring and
    #: shapes coarser than that come from the principal components alone. Without this a CPU run
    #: grew red and green blobs over the PCA faces between steps 500 and 800 (KID 40 -> 44).
    #: 0 = no high-pass.
    detail_cutoff: int = 32
    #: False (with ``pca_base``): no convolutional synthesis at all -- the generator is the
    #: mapping network and the learned map to PCA coefficients, decoded by the fixed components,
    #: and the discriminator an MLP on the principal-component coefficients of the image it is
    #: shown (``CoefficientDiscriminator``). A GAN in PCA's latent space: it learns the
    #: coefficients' distribution, which is far from PCA's Gaussian (measured: training maps
    #: projected on 64 components are closer to held-out maps, KID 27, than Gaussian samples of
    #: 200 components, 30), at a cost a CPU can train; it adds no detail beyond the components.
    detail: bool = True
    #: Hidden width of ``CoefficientDiscriminator``.
    coefficient_d_width: int = 512

    def __post_init__(self) -> None:
        r = self.resolution
        if self.pca_base < 0:
            raise ValueError(f"pca_base must be >= 0, got {self.pca_base}")
        if self.pca_base and not self.mean_offset:
            raise ValueError("pca_base needs mean_offset: the components are deviations from the mean map")
        b = self.pca_base_resolution
        if b < 4 or b & (b - 1):
            raise ValueError(f"pca_base_resolution must be a power of two >= 4, got {b}")
        if self.mapping_lr_mult <= 0 or self.coefficient_d_width < 1:
            raise ValueError(f"mapping_lr_mult must be > 0 and coefficient_d_width >= 1, got "
                             f"{self.mapping_lr_mult} and {self.coefficient_d_width}")
        if not self.detail and not self.pca_base:
            raise ValueError("detail=False needs pca_base: without components the generator would draw nothing")
        if self.pca_base and self.detail and not 0 <= self.detail_cutoff <= self.pca_size:
            # Above the components' own resolution a band would come from neither part.
            raise ValueError(f"detail_cutoff must be in 0..{self.pca_size} (the components' resolution), "
                             f"got {self.detail_cutoff}")
        if r < 8 or r > 1024 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two in 8..1024, got {r}")
        if min(self.z_dim, self.w_dim, self.mapping_layers, self.channel_base, self.channel_max) < 1:
            raise ValueError("GAN config sizes must be positive")

    @property
    def pca_size(self) -> int:
        """Side of the stored principal components (at most the output resolution)."""
        return min(self.pca_base_resolution, self.resolution)

    def channels(self, res: int) -> int:
        return max(1, min(self.channel_base // res, self.channel_max))

    @property
    def resolutions(self) -> list[int]:
        """4, 8, ..., resolution."""
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """Style inputs of the synthesis network (one per conv plus the last toRGB)."""
        return 2 * int(math.log2(self.resolution)) - 2

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GanConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ModelDataError(f"unknown GAN config fields {sorted(unknown)}: update ganfit")
        return cls(**values)


# --------------------------------------------------------------------------------------------
# Layers with equalised learning rate


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mult: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activate else x


class EqualConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activate else x


class ModulatedConv2d(nn.Module):
    """Conv whose input features are scaled per sample by ``affine(w)``; with ``demodulate`` the
    outputs are rescaled so the effective per-sample filter has unit L2 norm per output."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, w_dim: int,
                 demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (B, in)
        weight = self.weight * self.gain
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x * styles.to(x.dtype)[:, :, None, None]
        x = F.conv2d(x, weight.to(x.dtype), padding=weight.shape[-1] // 2)
        if self.demodulate:
            # sum over (in, kh, kw) of (weight * style)^2, per sample and output channel
            energy = styles.float().square() @ weight.float().square().sum(dim=(2, 3)).T  # (B, out)
            x = x * torch.rsqrt(energy + 1e-8).to(x.dtype)[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + optional noise + bias + leaky ReLU."""

    noise_const: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool,
                 noise: bool) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.use_noise = noise
        self.resolution = resolution
        if noise:
            self.noise_strength = nn.Parameter(torch.zeros(()))
            self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode,
                generator: torch.Generator | None) -> torch.Tensor:
        x = self.conv(x, w)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator,
                                    device=x.device if generator is None else generator.device).to(x.device)
            else:
                noise = self.noise_const
            x = x + (noise * self.noise_strength).to(x.dtype)
        x = x + self.bias.to(x.dtype)[:, None, None]
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[:, None, None]


class MappingNetwork(nn.Module):
    w_avg: torch.Tensor

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        dims = [config.z_dim] + [config.w_dim] * config.mapping_layers
        self.layers = nn.Sequential(*(
            EqualLinear(a, b, lr_mult=config.mapping_lr_mult, activate=True) for a, b in zip(dims[:-1], dims[1:])
        ))
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False,
                w_avg_beta: float = 0.995) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        w = self.layers(z)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, w_avg_beta))
        if truncation_psi != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation_psi)
        return w


class SynthesisNetwork(nn.Module):
    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        c4 = config.channels(4)
        self.const = nn.Parameter(torch.randn(c4, 4, 4))
        self.convs = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        in_ch = c4
        for res in config.resolutions if config.detail else []:
            out_ch = config.channels(res)
            if res > 4:
                self.convs.append(SynthesisLayer(in_ch, out_ch, config.w_dim, res, up=True, noise=config.noise))
            self.convs.append(SynthesisLayer(out_ch if res > 4 else in_ch, out_ch, config.w_dim, res, up=False,
                                             noise=config.noise))
            self.torgbs.append(ToRGB(out_ch, config.w_dim))
            in_ch = out_ch
        if config.mean_offset:
            self.register_buffer("mean_image", torch.zeros(3, config.resolution, config.resolution))
            # Start near the mean: the toRGB layers' usual initial output (about unit variance per
            # level, summed over the levels) would bury it under colour blobs that the first few
            # hundred steps of a short run would spend removing (seen on a CPU run: step 100).
            with torch.no_grad():
                for torgb in self.torgbs:
                    torgb.conv.weight.mul_(0.01 if config.pca_base else 0.1)
        if config.pca_base:
            size = config.pca_size
            # Components times their standard deviation, in the networks' [-1, 1] units: coefficients
            # of zero mean and unit variance give PCA's own samples.
            self.register_buffer("pca_basis", torch.zeros(config.pca_base, 3, size, size))
            self.pca_coefficients = EqualLinear(config.w_dim, config.pca_base)

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``ws`` ``(B, num_ws, w_dim)`` or ``(B, w_dim)`` (same style everywhere) -> ``(B, 3, R, R)``."""
        if ws.ndim == 2:
            ws = ws[:, None, :].expand(-1, self.config.num_ws, -1)
        if not self.config.detail:  # the linear decoder alone
            with torch.autocast(ws.device.type, enabled=False):
                return self.mean_image + self.pca_image(ws[:, 0].float())
        x = self.const[None].expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        img: torch.Tensor | None = None
        conv_index = 0
        for level, res in enumerate(self.config.resolutions):
            for _ in range(1 if res == 4 else 2):
                x = self.convs[conv_index](x, ws[:, conv_index], noise_mode, generator)
                conv_index += 1
            rgb = self.torgbs[level](x, ws[:, conv_index])
            if img is None:
                img = rgb
            else:
                img = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + rgb
        assert img is not None
        # The fixed parts in float32 even under autocast: bf16 rounding of mean + components (half
        # a uint8 level) would be a cue for the discriminator that real maps do not have.
        with torch.autocast(img.device.type, enabled=False):
            img = img.float()
            if self.config.pca_base:
                cutoff = self.config.detail_cutoff
                if 0 < cutoff < self.config.resolution:
                    coarse = F.interpolate(F.adaptive_avg_pool2d(img, cutoff), size=img.shape[-2:],
                                           mode="bilinear", align_corners=False)
                    img = img - coarse
                img = img + self.pca_image(ws[:, 0].float())
            if self.config.mean_offset:
                img = img + self.mean_image
        return img

    def pca_image(self, w: torch.Tensor) -> torch.Tensor:
        """The linear part ``basis . coefficients(w)`` at the output resolution."""
        return self.coefficient_image(self.pca_coefficients(w))

    def coefficient_image(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` coefficients -> ``basis . coefficients`` at the output resolution."""
        low = torch.einsum("bk,kchw->bchw", coefficients, self.pca_basis)
        if low.shape[-1] != self.config.resolution:
            low = F.interpolate(low, size=(self.config.resolution,) * 2, mode="bilinear", align_corners=False)
        return low


class Generator(nn.Module):
    """``z (B, z_dim) -> image (B, 3, R, R)`` in about [-1, 1]."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: NoiseMode = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode, generator)


# --------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activate=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activate=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (self.skip(F.avg_pool2d(x, 2)) + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """``image (B, 3, R, R) -> logit (B,)``, residual architecture."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        res = config.resolution
        self.from_rgb = EqualConv2d(3, config.channels(res), 1, activate=True)
        blocks = []
        while res > 4:
            blocks.append(DiscriminatorBlock(config.channels(res), config.channels(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = config.channels(4)
        self.conv = EqualConv2d(c4 + 1, c4, 3, activate=True)
        self.fc = EqualLinear(c4 * 16, c4, activate=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(img))
        x = _minibatch_std(x, self.config.mbstd_group)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1))).squeeze(1)


class CoefficientDiscriminator(nn.Module):
    """``image (B, 3, R, R) -> logit (B,)`` through the generator's own principal components: the
    image's coefficients in standard-deviation units (a fixed linear first layer, set with the
    generator's when training starts), their minibatch standard deviation, then an MLP. For
    ``GanConfig.detail=False``, where generated images lie in the components' span and reals
    differ from their projection only by what no generator could draw."""

    mean_image: torch.Tensor
    pca_basis: torch.Tensor

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        size = config.pca_size
        self.register_buffer("mean_image", torch.zeros(3, config.resolution, config.resolution))
        self.register_buffer("pca_basis", torch.zeros(config.pca_base, 3, size, size))
        width = config.coefficient_d_width
        self.hidden = nn.Sequential(EqualLinear(config.pca_base + 1, width, activate=True),
                                    EqualLinear(width, width, activate=True),
                                    EqualLinear(width, width, activate=True))
        self.out = EqualLinear(width, 1)

    def coefficients(self, img: torch.Tensor) -> torch.Tensor:
        """Least-squares coefficients of ``img - mean`` on the (orthogonal) components."""
        with torch.autocast(img.device.type, enabled=False):
            x = img.float() - self.mean_image
            if x.shape[-1] != self.pca_basis.shape[-1]:
                x = F.interpolate(x, size=self.pca_basis.shape[-2:], mode="area")
            return torch.einsum("bchw,kchw->bk", x, self.pca_basis) / self._squared_norms().clamp_min(1e-12)

    def _squared_norms(self) -> torch.Tensor:
        return self.pca_basis.flatten(1).float().square().sum(1)

    def generator_projection(self, synthesis: SynthesisNetwork) -> torch.Tensor:
        """``(K, K)``: row k is the projection of ``synthesis``'s image of component k alone, so
        ``c @ P`` are the coefficients this discriminator finds in the image of coefficients
        ``c``. The identity when the components are stored at the output size; below it, the
        bilinear resize up and the area resize down blur the finer components."""
        with torch.no_grad():
            eye = torch.eye(self.pca_basis.shape[0], device=self.pca_basis.device)
            return self.coefficients(synthesis.mean_image + synthesis.coefficient_image(eye))

    def r1_weights(self) -> torch.Tensor:
        """``(K,)`` weights that turn the gradient with respect to the coefficients into the image
        gradient's squared norm: ``|dD/dimg|^2 = sum_k w_k (dD/dc_k)^2``. Exact for orthogonal
        components: ``dc_k/dimg = A^T b_k / |b_k|^2`` with ``A`` the area resize by ``f`` per side
        (``A A^T = I / f^2``), so ``w_k = 1 / (f^2 |b_k|^2)``. Lets training in coefficient space
        keep the image-space R1 (same gamma)."""
        factor = self.config.resolution / self.pca_basis.shape[-1]
        norms = self._squared_norms()
        # Components left empty (fewer maps than pca_base) move no texel: weight 0, as on images.
        return torch.where(norms > 1e-12, 1.0 / (factor**2 * norms.clamp_min(1e-12)), torch.zeros_like(norms))

    def classify(self, c: torch.Tensor) -> torch.Tensor:
        """Logits of ``(B, K)`` coefficients (what ``forward`` computes after the projection)."""
        c = _minibatch_std(c[:, :, None, None], self.config.mbstd_group)[:, :, 0, 0]
        return self.out(self.hidden(c)).squeeze(1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.classify(self.coefficients(img))


def make_discriminator(config: GanConfig) -> nn.Module:
    """The discriminator a config trains with: convolutional, or on PCA coefficients."""
    return Discriminator(config) if config.detail else CoefficientDiscriminator(config)


def _minibatch_std(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append the mean standard deviation over groups of samples as one feature map, so the
    discriminator can see a lack of variety (mode collapse)."""
    b, c, h, w = x.shape
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, b // g, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // g,)
    y = y.reshape(1, b // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


# --------------------------------------------------------------------------------------------
# Export and the fitting-side model


def fit_w_gaussian(generator: Generator, samples: int = 10000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of ``w = mapping(z)``, ``z ~ N(0, I)`` (for the W-space prior)."""
    device = next(generator.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ws = []
    with torch.no_grad():
        for start in range(0, samples, 1000):
            z = torch.randn(min(1000, samples - start), generator.config.z_dim, generator=gen).to(device)
            ws.append(generator.mapping(z).double().cpu())
    w = torch.cat(ws)
    mean = w.mean(0)
    centred = w - mean
    cov = centred.T @ centred / (w.shape[0] - 1)
    return mean.float(), cov.float()


def write_export(file: Path, arrays: dict[str, Any]) -> int:
    """Write an exported model file (GAN, or GAN plus detail stage) and return its size; warns
    above the 50 MB shipping limit. Compressed: the int8 components shrink 2.6x losslessly (the
    shipped GAN: 40.6 -> 15.1 MB)."""
    atomic_savez(file, arrays, compressed=True)
    size = file.stat().st_size
    if size > MAX_EXPORT_BYTES:
        log.warning("%s is %.1f MB, over the 50 MB shipping limit: use fewer channels", file, size / 2**20)
    return size


def save_generator(generator: Generator, path: str | Path, info: dict[str, Any] | None = None,
                   w_samples: int = 10000) -> Path:
    """Write the generator (normally the EMA copy) as float16 ``.npz`` with its W Gaussian."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    w_mean, w_cov = fit_w_gaussian(generator, w_samples)
    state = generator.state_dict()
    quantised = [name for name in _QUANTISED if name in state and state[name].numel()]
    arrays: dict[str, np.ndarray] = {
        "kind": np.array("gan"),
        "version": np.array(2 if quantised else 1),
        "config": np.array(json.dumps(asdict(generator.config))),
        "info": np.array(json.dumps(info or {})),
        "w_mean": w_mean.numpy(),
        "w_cov": w_cov.numpy(),
    }
    for name, tensor in state.items():
        if name in quantised:
            arrays[f"q8/{name}"], arrays[f"q8scale/{name}"] = _quantise(tensor.detach().cpu())
        else:
            arrays[f"param/{name}"] = tensor.detach().cpu().numpy().astype(np.float16)
    size = write_export(file, arrays)
    log.info("generator weights (%.1f MB, float16%s) written to %s", size / 2**20,
             ", components int8" if quantised else "", file)
    return file


def _quantise(tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Int8 rows (one per component) with a float32 scale each: the largest texel maps to 127."""
    rows = tensor.float().flatten(1)
    scale = (rows.abs().amax(1) / 127.0).clamp_min(1e-12)
    values = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.view(tensor.shape).numpy(), scale.numpy()


def _dequantise(values: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values.astype(np.float32) * scale.reshape((-1,) + (1,) * (values.ndim - 1)))


def load_generator(path: str | Path) -> tuple[Generator, dict[str, Any], torch.Tensor, torch.Tensor]:
    """Generator (float32, frozen, eval), info, W mean and covariance from exported weights."""
    file = Path(path)
    check_npz(file, "GAN texture weights", "re-export them (docs/texture-model.md)")  # before numpy reads any data
    try:
        with np.load(file, allow_pickle=False) as data:
            if str(data["kind"]) != "gan":
                raise ModelDataError(f"{file} is a {data['kind']} model, not GAN weights")
            if int(data["version"]) > FORMAT_VERSION:
                raise ModelDataError(f"{file} has GAN format {int(data['version'])}: update ganfit")
            config = GanConfig.from_dict(json.loads(str(data["config"])))
            info = json.loads(str(data["info"]))
            state = {k[len("param/"):]: torch.from_numpy(data[k].astype(np.float32))
                     for k in data.files if k.startswith("param/")}
            for key in data.files:
                if key.startswith("q8/"):
                    name = key[len("q8/"):]
                    state[name] = _dequantise(data[key], data[f"q8scale/{name}"])
            w_mean = torch.from_numpy(data["w_mean"].astype(np.float32))
            w_cov = torch.from_numpy(data["w_cov"].astype(np.float32))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelDataError(f"cannot read GAN texture weights {file}: {exc}; re-export them") from exc
    generator = Generator(config)
    missing, unexpected = generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelDataError(f"{file} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    generator.requires_grad_(False).eval()
    return generator, info, w_mean, w_cov


def load_detail(path: str | Path) -> DetailNetwork | None:
    """The detail stage stored in a GAN export (format 3, ``train-texture-detail --export``), or None."""
    check_npz(Path(path), "GAN texture weights", "re-export them (docs/texture-model.md)")
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return detail_from_arrays(data)
    except (OSError, KeyError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelDataError(f"cannot read the detail stage of {path}: {exc}; re-export it") from exc


class GanTextureModel(nn.Module):
    """A trained generator as a ``TextureModel``.

    ``latent_space="w"`` (default): the latent is one ``w`` (``w_dim``) used by every layer; the
    prior is the Mahalanobis distance under a Gaussian fitted to ``mapping(z)`` (W is far from
    isotropic, so ``||w||^2`` would pull towards the wrong place), and fitting starts at its mean.
    ``latent_space="z"``: the latent is ``z`` and the prior ``||z||^2``. The mapping normalises z,
    so only its direction matters and the prior merely stops its scale from drifting; z = 0 has no
    direction, so fitting starts at a small fixed z.
    Noise inputs use their stored constant maps, so ``decode`` is deterministic.
    """

    w_mean: torch.Tensor
    w_whitening: torch.Tensor

    def __init__(self, generator: Generator, w_mean: torch.Tensor, w_cov: torch.Tensor,
                 latent_space: LatentSpace = "w", info: dict[str, Any] | None = None,
                 detail: DetailNetwork | None = None) -> None:
        super().__init__()
        self.detail = detail.requires_grad_(False).eval() if detail is not None else None
        if latent_space not in ("w", "z"):
            raise ValueError(f"latent_space must be 'w' or 'z', got {latent_space!r}")
        self.generator = generator.requires_grad_(False).eval()
        self.latent_space: LatentSpace = latent_space
        self.info = dict(info or {})
        eigenvalues, eigenvectors = torch.linalg.eigh(w_cov.double())
        floor = eigenvalues.max().clamp_min(1e-12) * 1e-6
        whitening = eigenvectors / eigenvalues.clamp_min(floor).sqrt()
        self.register_buffer("w_mean", w_mean.float())
        self.register_buffer("w_whitening", whitening.float())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None,
             latent_space: LatentSpace = "w", detail: bool = True) -> GanTextureModel:
        """``detail=False`` leaves out a stored detail stage (``texture/detail.py``), for comparison."""
        generator, info, w_mean, w_cov = load_generator(path)
        network = load_detail(path) if detail else None
        model = cls(generator, w_mean, w_cov, latent_space, info, network)
        return model.to(device) if device is not None else model

    @property
    def config(self) -> GanConfig:
        return self.generator.config

    @property
    def latent_dim(self) -> int:
        return self.config.w_dim if self.latent_space == "w" else self.config.z_dim

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def device(self) -> torch.device:
        return self.w_mean.device

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        w = latent if self.latent_space == "w" else self.generator.mapping(latent)
        img = self.generator.synthesis(w, noise_mode="const")
        if self.detail is not None:
            img = img + self.detail(img)
        return ((img + 1.0) * 0.5).clamp(0.0, 1.0)

    forward = decode

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        z = torch.randn(n, self.config.z_dim, generator=generator, device=device).to(self.device)
        if self.latent_space == "z":
            return z
        with torch.no_grad():
            return self.generator.mapping(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.decode(self.sample_latent(n, generator))

    def prior(self, latent: torch.Tensor) -> torch.Tensor:
        if self.latent_space == "z":
            return latent.square().sum(dim=-1)
        return ((latent - self.w_mean) @ self.w_whitening).square().sum(dim=-1)

    def project(self, textures: torch.Tensor, steps: int = 50, learning_rate: float = 0.05,
                prior_weight: float = 1e-4) -> torch.Tensor:
        """The latent ``(B, latent_dim)`` whose texture is closest (mean absolute difference plus a
        little prior) to ``textures`` ``(B, 3, S, S)`` in [0, 1]: a short optimisation from
        ``initial_latent`` (GAN inversion). Fitting starts from it, as it starts from the PCA
        model's least-squares projection, instead of from the mean face (paper 3.4), which left
        60 joint steps too few to reach the photo's colouring."""
        from ganfit.fit.optim import Adam

        target = textures.detach().to(self.device, torch.float32)
        if target.shape[-1] != self.resolution:
            target = F.interpolate(target, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=target.shape[-1] > self.resolution)
        latent = self.initial_latent(target.shape[0]).clone().requires_grad_(True)
        optimiser = Adam([latent], lr=learning_rate)
        with torch.enable_grad():
            for _ in range(steps):
                error = (self.decode(latent) - target).abs().mean(dim=(1, 2, 3))
                loss = (error + prior_weight * self.prior(latent)).sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        return latent.detach()

    def initial_latent(self, n: int = 1) -> torch.Tensor:
        if self.latent_space == "w":
            return self.w_mean.expand(n, -1).clone()
        gen = torch.Generator(device="cpu").manual_seed(0)
        return (0.01 * torch.randn(1, self.config.z_dim, generator=gen)).expand(n, -1).clone().to(self.device)
