"""The terms of the GANFit objective (paper eqs. 8-13), each per image (B,) so the fitting
loop can weight, log and switch them off one by one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def identity_loss(embedding: Tensor, target: Tensor) -> Tensor:
    """Eq. 9 (and eq. 8 for the random-pose render): 1 - cosine similarity of identity features."""
    return 1.0 - F.cosine_similarity(embedding, target, dim=-1)


def content_loss(features: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Eq. 10: distances of intermediate activations, each normalised by the target's norm so the
    layers count alike whatever their size and scale (the paper divides by the layer size)."""
    terms = []
    for feature, target in zip(features, targets):
        diff = (feature - target).flatten(1).norm(dim=1)
        terms.append(diff / target.flatten(1).norm(dim=1).clamp_min(1e-8))
    return torch.stack(terms, 0).mean(0)


def pixel_loss(image: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Eq. 11: mean absolute difference over the weighted face region (weight (B, 1, H, W))."""
    per_pixel = (image - target).abs().mean(1, keepdim=True) * weight
    return per_pixel.flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)


def landmark_loss(projected: Tensor, target: Tensor, interocular: Tensor) -> Tensor:
    """Eq. 12: mean squared landmark distance in units of the outer-eye-corner distance."""
    return ((projected - target) ** 2).sum(-1).mean(-1) / interocular**2


def coefficient_prior(coefficients: Tensor, std: Tensor | None = None) -> Tensor:
    """Eq. 13 (and eq. 4): squared norm of coefficients in units of their prior std."""
    scaled = coefficients if std is None else coefficients / std
    return (scaled**2).sum(-1)
