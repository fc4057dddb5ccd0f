"""Camera parameters as the optimiser sees them, and their conversion to the paper's camera.

Paper 3.2 describes the camera by position, look-at point, up vector and focal length. Those are
awkward to optimise directly (redundant and badly scaled), so the fit works with the head's
rotation (axis-angle, zero = frontal) and translation in the camera frame, with the distance on
a log scale, and converts to the paper's camera whenever it renders or writes a result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..render import Camera

# Model space is y up with the face toward +z; the camera frame is x right, y down, z forward.
# A frontal camera therefore flips y and z.
_FRONTAL = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def axis_angle_to_matrix(rotation: Tensor) -> Tensor:
    """Rodrigues' formula for (B, 3) axis-angle vectors, smooth at zero."""
    theta2 = (rotation * rotation).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    # sin(t)/t and (1-cos(t))/t^2 with Taylor forms near zero keep gradients finite.
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-12))
    x, y, z = rotation.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


@dataclass
class HeadPose:
    """Optimisable pose: p_camera = R(rotation) @ FRONTAL @ p_model + t."""

    rotation: Tensor  # (B, 3) axis-angle, radians
    offset: Tensor  # (B, 2) x, y of the translation divided by its depth
    log_depth: Tensor  # (B,) log of the translation's depth in metres
    focal: Tensor  # (B,) focal length / image width (fixed during fitting)

    def parameters(self) -> list[Tensor]:
        return [self.rotation, self.offset, self.log_depth]

    def rotation_matrix(self) -> Tensor:
        frontal = _FRONTAL.to(self.rotation)
        return axis_angle_to_matrix(self.rotation) @ frontal

    def translation(self) -> Tensor:
        depth = torch.exp(self.log_depth)[:, None]
        return torch.cat([self.offset * depth, depth], -1)

    def camera(self) -> Camera:
        """The equivalent world-space camera (the head stays put, the camera moves)."""
        rot = self.rotation_matrix()  # world -> camera
        t = self.translation()
        rot_t = rot.transpose(-1, -2)
        position = -(rot_t @ t[..., None]).squeeze(-1)
        forward = rot_t[..., 2]
        up = -rot_t[..., 1]
        look_at = position + forward * t.norm(dim=-1, keepdim=True)
        return Camera(position=position, look_at=look_at, up=up, focal=self.focal)

    def detach(self) -> "HeadPose":
        return HeadPose(*(x.detach().clone() for x in (self.rotation, self.offset, self.log_depth, self.focal)))


def initial_pose(
    landmarks: Tensor, model_landmarks: Tensor, width: Tensor, height: Tensor, focal: Tensor
) -> HeadPose:
    """A frontal pose that puts the model's landmarks over the detected ones in size and place.

    landmarks (B, 68, 2) in photo pixels; model_landmarks (B, 68, 3) in model space; width,
    height, focal (B,). Depth comes from the ratio of spreads, the offset from the centroids.
    """
    f_px = focal * width
    spread_img = (landmarks - landmarks.mean(1, keepdim=True)).norm(dim=-1).mean(-1)
    centred = model_landmarks - model_landmarks.mean(1, keepdim=True)
    spread_model = centred[..., :2].norm(dim=-1).mean(-1)
    depth = f_px * spread_model / spread_img.clamp_min(1e-6)
    # Solve for the translation that puts the model's landmark centroid m at distance `depth`
    # on the ray through the image centroid: FRONTAL @ m + t = depth * (o_x, o_y, 1).
    centre = landmarks.mean(1)
    o_x = (centre[:, 0] - 0.5 * width) / f_px
    o_y = (centre[:, 1] - 0.5 * height) / f_px
    m = model_landmarks.mean(1)
    t = torch.stack([o_x * depth - m[:, 0], o_y * depth + m[:, 1], depth + m[:, 2]], -1)
    offset = t[:, :2] / t[:, 2:]
    depth = t[:, 2]
    rotation = torch.zeros(landmarks.shape[0], 3, dtype=landmarks.dtype, device=landmarks.device)
    return HeadPose(rotation=rotation, offset=offset, log_depth=torch.log(depth), focal=focal.clone())
