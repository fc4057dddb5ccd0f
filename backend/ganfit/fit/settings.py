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
    texture_size: int = 512  # UV texture resolution (square); the face chart covers 58% of it
    # With True the final texture keeps the photo outside the face's outline (ears, temples,
    # scalp, neck) only where it looks like the skin inside it; elsewhere (background, hair,
    # hats) it is filled from the surroundings (fit/texture_projection.py). Off by default: on
    # the 22 identity photos dlib found the renders less like the photos (overlay 0.103 vs
    # 0.084, turned 25 degrees 0.314 vs 0.307; docs/fitting.md).
    skin_only_outside_face: bool = False
    # Where the final albedo comes from (protocol.TEXTURE_SOURCES): "photo", the photo projected
    # into UV (seen hair and hats painted onto the scalp: the "keep hair" look); "blend", the
    # photo where it shows skin seen squarely, the texture model fitted to that skin elsewhere,
    # blended with no seam (texture/blend.py; the shipped GAN unless a texture model is given).
    texture_source: str = "photo"
    light_prior_weight: float = 0.01


@dataclass(frozen=True)
class JointStageSettings:
    """Stage 2 of paper 3.4: every parameter at once under the full objective (eqs. 8-13).

    Each term has a weight; a weight of 0 switches the term off (Table I's ablation). The
    weights are in the units of each term as computed in ``fit.losses``; the defaults were tuned
    on grace_hopper and astronaut (docs/fitting.md).
    """

    steps: int = 60  # 0 skips the stage (the landmark-only fit)
    learning_rate: float = 0.01  # the paper's Adam rate, for identity/expression/light
    pose_learning_rate: float = 0.002  # rotation (rad) and log-depth move less per step
    warmup_steps: int = 10  # learning rates ramp up linearly over these first steps
    render_size: int = 224  # the photo-view render (face window) and the pixel loss
    # The random-pose render only feeds the identity network: its window hugs the 150 px chip,
    # so 160 px keeps about one render pixel per chip pixel at 2/3 of the cost of 224.
    random_render_size: int = 160
    identity_weight: float = 1.0  # eq. 9, cosine distance photo vs render in the photo's pose
    random_pose_weight: float = 1.0  # eq. 8, the same for a render with random pose/expression/light
    content_weight: float = 0.5  # eq. 10, normalised distances of intermediate activations
    pixel_weight: float = 1.0  # eq. 11, L1 over the face region
    landmark_weight: float = 50.0  # eq. 12, squared distance / inter-ocular distance squared
    identity_prior_weight: float = 2e-4  # eq. 13, identity coefficients in units of their std
    expression_prior_weight: float = 1e-4  # eq. 13, ARKit weights in units of their std
    light_prior_weight: float = 0.01  # eq. 13, keeps the light's intensity scale fixed
    random_yaw_degrees: float = 30.0
    random_pitch_degrees: float = 15.0
    random_expression: float = 0.3  # largest random ARKit weight added in the random-pose render
    random_light: float = 0.3  # relative jitter of the random render's light colour and direction
    # With a texture model (FitSettings.texture_model): the latent's Adam rate and prior weight.
    # 0.1, chosen on the 8 photos that chose the prior weight below (docs/texture-model.md,
    # session 7): 0.03 left the latent near where the inversion put it; 0.1 gave both priors
    # closer and sharper fits (GAN overlay 0.138 -> 0.132, sharpness 0.235 -> 0.316; PCA-96
    # 0.182 -> 0.159, 0.214 -> 0.242), and the GAN's closest; 0.3 was sharper still but further
    # from the person with the GAN (0.142).
    texture_learning_rate: float = 0.1
    # eq. 13 for the texture latent (its prior is ~||z||^2). 1e-5, chosen on 8 photos outside the
    # benchmark's 20 (docs/texture-model.md): against 1e-3 it made fits of both priors closer to
    # the person and sharper (the GAN's overlay distance 0.165 -> 0.128, sharpness 0.09 -> 0.24).
    texture_prior_weight: float = 1e-5
    # The paper's optional last refinement of the UV map itself (with a texture model only).
    # Off by default: it leaves the texture prior, and results report it separately.
    texture_refine_steps: int = 0
    texture_refine_learning_rate: float = 0.01


@dataclass(frozen=True)
class FitSettings:
    """All settings of one reconstruction; recorded in the result folder."""

    landmark: LandmarkStageSettings = field(default_factory=LandmarkStageSettings)
    appearance: AppearanceStageSettings = field(default_factory=AppearanceStageSettings)
    joint: JointStageSettings = field(default_factory=JointStageSettings)
    seed: int = 0
    device: str = "cpu"
    face_index: int | None = None  # which face when a photo has several (0 = largest)
    # A texture model file (ganfit.texture: GAN weights or a PCA .npz): the texture becomes its
    # decoded latent, fitted in stage 2 (paper eq. 6). None: the photo projected into UV.
    texture_model: str | None = None
    max_photo_side: int = 2048
    # Paper 4: "ganfit" optimises (3.4); "fast" takes the regression network's one forward pass;
    # "ganfit++" starts the full-objective fit from it, skipping the landmark and lighting stages.
    # FitSettings() is GANFit, the fit as configured here; the command line's and the protocol's
    # default mode (protocol.DEFAULT_MODE, GANFit++) is applied by ganfit.settings.build_settings.
    mode: str = "ganfit"
    regressor: str | None = None  # the regression network's weights (None: the shipped ones)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
