"""The regression network of paper section 4 (Fig. 3): one forward pass from a photo's face to
every parameter GANFit optimises (a ``FitParams``).

Inputs, per photo (``EncoderInputs``):
- the aligned face: the identity network's 150 x 150 chip (dlib's alignment rule);
- the identity network's multi-level activations (the content features of eq. 10), each
  globally average-pooled, with the 128-D descriptor: 32 + 64 + 128 + 256 + 128 = 608 values
  for ``DlibIdentity``;
- the 68 detected landmarks, normalised by their centroid and mean spread (the similarity that
  ``fit.pose.initial_pose`` undoes), concatenated before the last fully connected layers, with
  the face's framing (its size and place in focal lengths, ``framing``), which sets the
  perspective.

Shape (defaults, ``EncoderConfig``), about 0.61 M parameters (2.4 MB in float32):
- chip branch: five 3x3 stride-2 convolutions 3-16-32-48-64-96 with GroupNorm and ReLU
  (150 -> 5 px), global average pool, linear 96 -> 128;
- identity branch: linear 608 -> 256;
- fusion: [128 | 256] -> 384, ReLU;
- head: [384 | 136 landmark values | 3 framing values] -> 256, ReLU -> the parameters (6 pose + Ki identity +
  Ke expression + 9 light + the texture latent when a texture model is given).
Why this size: the heavy lifting (face identity and appearance) is already done by the frozen
identity network, whose activations are inputs; the network only has to map them to model
coefficients. A few hundred thousand parameters train at hundreds of photos per second on this
2-core CPU in stage 1 (stage 2's cost is the renderer and identity network, not the encoder),
the weights stay far under the 30 MB budget, and the width can grow through ``EncoderConfig``
when a GPU is lent.

The output layer starts at zero (weights and biases) and every output is a residual on a
neutral value, so the untrained network renders the mean face (identity 0, expression 0) in
``initial_pose`` of the detected landmarks, the landmark stage's start, lit by the appearance
stage's initial light (from the camera, a little above, colour 0.6, ambient 0.4): paper 5.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fit.pose import HeadPose, initial_pose
from ..models.shape_model import ShapeModel
from ..params import FitParams, LightParams

if TYPE_CHECKING:
    from ..face.identity import IdentityNetwork
    from ..fit.joint_stage import PhotoTarget

__all__ = ["EncoderConfig", "EncoderInputs", "EncoderOutput", "RegressionEncoder", "encoder_inputs",
           "inputs_from_targets", "pool_identity"]

#: Pooled width of ``DlibIdentity.features``: four activation levels and the descriptor.
DLIB_IDENTITY_WIDTH = 32 + 64 + 128 + 256 + 128
#: The largest light colour and ambient, as the full-objective fit clamps them (fit.joint_stage).
LIGHT_LIMIT = 4.0
#: The appearance stage's initial light (``fit.appearance_stage.fit_lighting``).
INITIAL_COLOUR, INITIAL_AMBIENT, INITIAL_LIFT = 0.6, 0.4, 0.3
#: Identity coefficients are kept within this many prior stds, as fitting clamps them.
IDENTITY_LIMIT = 3.0


@dataclass(frozen=True)
class EncoderConfig:
    """The network's widths; stored with every checkpoint so weights reload into the same shape."""

    chip_channels: tuple[int, ...] = (16, 32, 48, 64, 96)
    chip_features: int = 128
    identity_width: int = DLIB_IDENTITY_WIDTH
    identity_features: int = 256
    fused: int = 384
    head: int = 256
    texture_latent_dim: int = 0  # 0: no texture model; else the model's latent size
    # Output scales: one unit of a raw output moves the parameter by this much.
    rotation_scale: float = 0.5  # radians
    # In the face's size on the image (its landmarks' mean spread), not in image units: the
    # network sees only the aligned chip and normalised landmarks, so a correction in image units
    # would be right for one framing only (trained on UTKFace's tight crops, it put heads 16-43%
    # of the eye distance off in wider photos).
    offset_scale: float = 0.25  # landmark spreads
    depth_scale: float = 0.1  # log depth
    light_scale: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in fields(EncoderConfig)}
        values = {k: (tuple(v) if k == "chip_channels" else v) for k, v in values.items() if k in known}
        return EncoderConfig(**values)


@dataclass(frozen=True)
class EncoderInputs:
    """What the encoder sees for a batch of B photos (row b is photo b)."""

    chip: Tensor  # (B, 3, 150, 150) RGB in [0, 1], the identity network's aligned chip
    identity: Tensor  # (B, identity_width) pooled activations and descriptor (``pool_identity``)
    landmarks: Tensor  # (B, 68, 2) detected, photo pixels
    image_size: Tensor  # (B, 2) photo width, height
    focal: Tensor  # (B,) focal length / image width

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "EncoderInputs":
        return replace(self, **{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    @staticmethod
    def cat(rows: list["EncoderInputs"]) -> "EncoderInputs":
        return EncoderInputs(**{f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in fields(EncoderInputs)})


@dataclass(frozen=True)
class EncoderOutput:
    """The prediction, and how far the raw outputs went past the parameters' valid ranges
    (``range_excess`` (B,): add it to a loss so clamped outputs are pulled back, not stuck)."""

    params: FitParams
    range_excess: Tensor


def pool_identity(embedding: Tensor, features: list[Tensor]) -> Tensor:
    """(B, sum of channels + D): each activation level averaged over space, then the descriptor."""
    pooled = [f.mean(dim=(2, 3)) if f.dim() == 4 else f.flatten(1) for f in features]
    return torch.cat([*pooled, embedding], 1)


@torch.no_grad()
def encoder_inputs(photo: Tensor, landmarks: np.ndarray, focal: float, identity_net: "IdentityNetwork",
                   render_size: int = 224) -> EncoderInputs:
    """One photo's ``EncoderInputs`` (batch 1). ``photo`` (3, H, W) in [0, 1]; ``landmarks`` (68, 2)."""
    from ..fit.joint_stage import prepare_target

    target = prepare_target(photo, landmarks, identity_net, render_size)
    return inputs_from_targets([target], torch.tensor([focal], dtype=photo.dtype, device=photo.device))


@torch.no_grad()
def inputs_from_targets(targets: list["PhotoTarget"], focal: Tensor) -> EncoderInputs:
    """``EncoderInputs`` for B photos from the objective's targets (``fit.joint_stage.prepare_target``
    with its identity features), so a reconstruction runs the identity network once per photo
    for both the encoder and the fit. ``focal`` (B,): focal length / image width."""
    from ..face.alignment import extract_chips

    rows = []
    for target in targets:
        width, height = target.size
        rows.append(EncoderInputs(
            chip=extract_chips(target.image, [target.window], [target.warp]).detach(),
            identity=pool_identity(target.embedding, target.features),
            landmarks=target.landmarks,
            image_size=target.landmarks.new_tensor([[width, height]]),
            focal=focal[len(rows):len(rows) + 1].to(target.landmarks),
        ))
    return EncoderInputs.cat(rows)


#: ``framing``'s first value is centred on this log size (a face spread of 0.1 focal lengths).
FRAMING_LOG_SIZE = math.log(0.1)


def framing(inputs: EncoderInputs) -> Tensor:
    """(B, 3): where the face sits in the camera's view, which neither the aligned chip nor the
    normalised landmarks show: the log of the landmarks' mean spread in focal lengths (how far
    away the head is, so how strong the perspective) and the landmark centre's offset from the
    image centre in focal lengths. Without it, weights trained on UTKFace's tight crops (the
    face spread 0.2 focal lengths under the default focal length) placed heads in ordinary
    photos (0.04-0.08) no better than the untrained mean face: 5-7% landmark error against 2.5%
    on the same photos cropped tight."""
    f_px = inputs.focal * inputs.image_size[:, 0]
    centre = inputs.landmarks.mean(1)
    spread = (inputs.landmarks - centre[:, None]).norm(dim=-1).mean(-1)
    offset = (centre - 0.5 * inputs.image_size) / f_px[:, None]
    return torch.cat([(torch.log(spread / f_px) - FRAMING_LOG_SIZE)[:, None], offset], 1)


def normalise_landmarks(landmarks: Tensor) -> Tensor:
    """(B, 136): landmarks minus their centroid, divided by their mean distance to it."""
    centred = landmarks - landmarks.mean(1, keepdim=True)
    spread = centred.norm(dim=-1).mean(-1).clamp_min(1e-6)
    return (centred / spread[:, None, None]).flatten(1)


def _chip_branch(channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = 3
    for width in channels:
        layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(min(8, width), width), nn.ReLU()]
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class RegressionEncoder(nn.Module):
    """Fig. 3's encoder for one shape model: ``forward(inputs) -> EncoderOutput``."""

    def __init__(self, model: ShapeModel, config: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.num_identity = int(model.num_identity)
        self.num_expression = int(model.num_expression)
        c = config
        self.chip = _chip_branch(tuple(c.chip_channels))
        self.chip_fc = nn.Linear(c.chip_channels[-1], c.chip_features)
        self.identity_fc = nn.Linear(c.identity_width, c.identity_features)
        self.fuse = nn.Linear(c.chip_features + c.identity_features, c.fused)
        self.head = nn.Linear(c.fused + 136 + 3, c.head)
        self.sizes = [3, 2, 1, self.num_identity, self.num_expression, 3, 3, 3, c.texture_latent_dim]
        self.out = nn.Linear(c.head, sum(self.sizes))
        nn.init.zeros_(self.out.weight)  # the untrained network predicts the neutral values (paper 5.1)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            zeros_i = torch.zeros(1, self.num_identity)
            zeros_e = torch.zeros(1, self.num_expression)
            neutral_marks = model.vertices(zeros_i, zeros_e, indices=model.landmark_indices)[0]
            centre = model.vertices(zeros_i, zeros_e)[0].mean(0)
        self.register_buffer("neutral_landmarks", neutral_marks.detach().clone().float())  # (68, 3)
        self.register_buffer("head_centre", centre.detach().clone().float())  # (3,)
        self.register_buffer("expression_min", model.expression_min.detach().clone().float())
        self.register_buffer("expression_max", model.expression_max.detach().clone().float())

    def neutral_pose(self, inputs: EncoderInputs) -> HeadPose:
        """``initial_pose`` of the detected landmarks for the mean face: where the landmark stage starts."""
        batch = inputs.landmarks.shape[0]
        marks = self.neutral_landmarks.to(inputs.landmarks).expand(batch, -1, -1)
        return initial_pose(inputs.landmarks, marks, inputs.image_size[:, 0], inputs.image_size[:, 1], inputs.focal)

    def forward(self, inputs: EncoderInputs) -> EncoderOutput:
        c = self.config
        chip = self.chip_fc(self.chip(inputs.chip))
        identity = self.identity_fc(inputs.identity)
        fused = torch.relu(self.fuse(torch.cat([torch.relu(chip), torch.relu(identity)], 1)))
        geometry = torch.cat([normalise_landmarks(inputs.landmarks), framing(inputs)], 1)
        hidden = torch.relu(self.head(torch.cat([fused, geometry], 1)))
        rotation, offset, depth, ident, expr, direction, colour, ambient, latent = self.out(hidden).split(self.sizes, 1)

        with torch.no_grad():
            base = self.neutral_pose(inputs)
        marks = inputs.landmarks
        spread = (marks - marks.mean(1, keepdim=True)).norm(dim=-1).mean(-1)
        face_size = (spread / (inputs.focal * inputs.image_size[:, 0]))[:, None]  # in units of the focal length
        pose = HeadPose(
            rotation=base.rotation + c.rotation_scale * rotation,
            offset=base.offset + c.offset_scale * face_size * offset,
            log_depth=base.log_depth + c.depth_scale * depth[:, 0],
            focal=base.focal,
        )
        # Clamped in the forward pass (as fitting clamps), straight through in the backward pass;
        # range_excess pulls raw values that wander past the limits back.
        lo, hi = self.expression_min.to(expr), self.expression_max.to(expr)
        expression = expr + (torch.clamp(expr, lo, hi) - expr).detach()
        identity_c = ident + (ident.clamp(-IDENTITY_LIMIT, IDENTITY_LIMIT) - ident).detach()
        excess = ((expr - torch.clamp(expr, lo, hi)) ** 2).sum(-1)
        excess = excess + ((ident - ident.clamp(-IDENTITY_LIMIT, IDENTITY_LIMIT)) ** 2).sum(-1)

        with torch.no_grad():
            camera = base.camera()
            centre = self.head_centre.to(camera.position).expand_as(camera.position)
            distance = (camera.position - centre).norm(dim=-1)
            towards = (camera.position - centre) / distance[:, None]
            start = towards + INITIAL_LIFT * camera.up
        # A light's colour and ambient are non-negative (the fit clamps them to [0, LIGHT_LIMIT]):
        # unclamped, the shipped weights gave every photo a red light colour of -0.07, which the
        # GLB's KHR_lights_punctual refuses (the glTF validator reports an error).
        raw_colour = INITIAL_COLOUR + c.light_scale * colour
        raw_ambient = INITIAL_AMBIENT + c.light_scale * ambient
        light_colour = raw_colour + (raw_colour.clamp(0.0, LIGHT_LIMIT) - raw_colour).detach()
        light_ambient = raw_ambient + (raw_ambient.clamp(0.0, LIGHT_LIMIT) - raw_ambient).detach()
        excess = excess + ((raw_colour - raw_colour.clamp(0.0, LIGHT_LIMIT)) ** 2).sum(-1)
        excess = excess + ((raw_ambient - raw_ambient.clamp(0.0, LIGHT_LIMIT)) ** 2).sum(-1)
        light = LightParams(
            direction=start + c.light_scale * direction,
            colour=light_colour,
            ambient=light_ambient,
            centre=centre.clone(),
            distance=distance,
        )
        params = FitParams(pose=pose, identity=identity_c, expression=expression, light=light,
                           texture_latent=latent if c.texture_latent_dim else None)
        return EncoderOutput(params=params, range_excess=excess)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
