"""Fitting settings: one object passed through every stage (paper 3.4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LandmarkStageSettings:
    """Stage 1: camera, identity and expression from the landmark loss (paper eq. 12)."""

    steps: int = 300
    learning_rate: float = 0.02
    identity_weight: float = 2e-5  # prior on identity coefficients in units of their std
    expression_weight: float = 1e-5  # prior pulling ARKit weights toward neutral
    # Focal length / image width used when the photo carries no EXIF 35 mm-equivalent focal
    # length. 1.5 is a short portrait lens (about 54 mm on full frame); the landmark loss
    # cannot tell focal length from distance on one photo, so it is fixed rather than fitted.
    default_focal: float = 1.5


@dataclass(frozen=True)
class AppearanceStageSettings:
    """Stage 2: lighting from the pixel loss, then the albedo texture by projecting the photo."""

    steps: int = 80
    learning_rate: float = 0.05
    render_size: int = 224  # the face crop is rendered at render_size x render_size
    texture_size: int = 1024  # UV texture resolution (square); the face island spans about 0.3 of it
    light_prior_weight: float = 0.01


@dataclass(frozen=True)
class FitSettings:
    """All settings of one reconstruction; recorded in the result folder."""

    landmark: LandmarkStageSettings = field(default_factory=LandmarkStageSettings)
    appearance: AppearanceStageSettings = field(default_factory=AppearanceStageSettings)
    seed: int = 0
    device: str = "cpu"
    face_index: int | None = None  # which face when a photo has several (0 = largest)
    max_photo_side: int = 2048

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
