"""Stage 1 of paper 3.4: rough alignment of shape, expression and camera to 2D landmarks.

Only the 68 landmark vertices are evaluated (``ShapeModel.vertices(..., indices=...)``), so a
step costs well under a millisecond and a few hundred steps fit in the 10 s budget with room to
spare. The loss is eq. 12, normalised by the outer-eye-corner distance so one setting works for
any photo size, plus the regularisation of eq. 4 on identity and expression.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from ..face.detection import OUTER_EYE_CORNERS
from ..models.shape_model import ShapeModel
from .pose import HeadPose, initial_pose
from .optim import Adam, check_finite_loss, check_loss_fell
from .progress import MESH_EVERY, ProgressEvent, ProgressFn, no_progress
from .settings import LandmarkStageSettings


log = logging.getLogger(__name__)


def _lower_lr(settings: LandmarkStageSettings) -> str:
    """What to do about a runaway landmark stage: its learning rate is the only lever."""
    return (f"lower the landmark-stage learning rate (--lr, the protocol's lr; now {settings.learning_rate:g}, "
            f"default {LandmarkStageSettings.learning_rate:g})")



@dataclass
class LandmarkFit:
    """Result of stage 1; tensors are detached."""

    pose: HeadPose
    identity: Tensor  # (B, Ki) in units of the prior std
    expression: Tensor  # (B, Ke) ARKit weights in [0, 1]
    projected: Tensor  # (B, 68, 2) fitted landmark positions in photo pixels
    error_iod: Tensor  # (B,) mean landmark distance / outer-eye-corner distance
    losses: list[float]


def interocular(landmarks: Tensor) -> Tensor:
    """Outer-eye-corner distance (B,) of (B, 68, 2) landmarks (the 300-W normaliser)."""
    right, left = OUTER_EYE_CORNERS
    return (landmarks[:, left] - landmarks[:, right]).norm(dim=-1)


def fit_landmarks(
    model: ShapeModel,
    landmarks: Tensor,
    image_size: Tensor,
    focal: Tensor,
    settings: LandmarkStageSettings = LandmarkStageSettings(),
    progress: ProgressFn = no_progress,
    shared_identity: bool = False,
) -> LandmarkFit:
    """Fit pose, identity and expression to detected landmarks (B, 68, 2) in photo pixels.

    image_size (B, 2) holds each photo's (width, height); focal (B,) its focal / width. The first
    third of the steps moves the pose alone (a rigid alignment), then everything moves. With
    ``shared_identity`` the B photos show one person (paper eq. 14): one identity, returned as
    (1, Ki); pose and expression stay per photo.
    """
    batch = landmarks.shape[0]
    dtype, device = landmarks.dtype, landmarks.device
    index = model.landmark_indices
    identity = torch.zeros(1 if shared_identity else batch, model.num_identity, dtype=dtype, device=device, requires_grad=True)
    expression = torch.zeros(batch, model.num_expression, dtype=dtype, device=device, requires_grad=True)
    width, height = image_size[:, 0], image_size[:, 1]
    with torch.no_grad():
        neutral = model.vertices(identity.expand(batch, -1), expression, indices=index)
    pose = initial_pose(landmarks, neutral, width, height, focal)
    for p in pose.parameters():
        p.requires_grad_(True)
    iod = interocular(landmarks)
    id_std = model.identity_std.to(dtype)
    exp_std = model.expression_std.to(dtype)

    rigid_steps = settings.steps // 3
    optimiser = Adam(pose.parameters() + [identity, expression], lr=settings.learning_rate)
    losses: list[float] = []
    for step in range(settings.steps):
        optimiser.zero_grad(set_to_none=True)
        points = model.vertices(identity.expand(batch, -1) * id_std, expression, indices=index)
        projected = pose.camera().project(points, width, height)[..., :2]
        dist2 = ((projected - landmarks) ** 2).sum(-1) / (iod[:, None] ** 2)
        data = dist2.mean()
        prior = settings.identity_weight * (identity**2).sum(-1).sum() / batch
        prior = prior + settings.expression_weight * ((expression / exp_std) ** 2).sum(-1).mean()
        loss = data + prior
        loss.backward()
        if step < rigid_steps:
            identity.grad = None
            expression.grad = None
        optimiser.step()
        with torch.no_grad():
            # Projected gradient: expressions stay in the model's range (ARKit: [0, 1]); identity within 3 std.
            expression.clamp_(model.expression_min.to(dtype), model.expression_max.to(dtype))
            identity.clamp_(-3.0, 3.0)
        losses.append(float(loss.detach()))
        check_finite_loss("landmark stage", step, losses[-1], _lower_lr(settings))
        mesh = None
        if (step + 1) % MESH_EVERY == 0 or step + 1 == settings.steps:
            with torch.no_grad():
                mesh = model.vertices(identity[:1] * id_std, expression[:1])[0].cpu().numpy()
        terms = {"landmark": float(data.detach()), "prior": float(prior.detach())}
        progress(ProgressEvent("landmarks", step + 1, settings.steps, terms, vertices=mesh))

    check_loss_fell("landmark stage", losses, _lower_lr(settings))
    with torch.no_grad():
        points = model.vertices(identity.expand(batch, -1) * id_std, expression, indices=index)
        projected = pose.camera().project(points, width, height)[..., :2]
        error = (projected - landmarks).norm(dim=-1).mean(-1) / iod
    log.info("landmark stage: mean error %s of the inter-ocular distance", [f"{e:.2%}" for e in error.tolist()])
    return LandmarkFit(
        pose=pose.detach(),
        identity=identity.detach(),
        expression=expression.detach(),
        projected=projected.detach(),
        error_iod=error.detach(),
        losses=losses,
    )


def solve_landmarks(
    model: ShapeModel,
    landmarks: Tensor,
    image_size: Tensor,
    pose: HeadPose,
    identity: Tensor,
    expression: Tensor,
    landmark_weight: float,
    identity_prior_weight: float,
    expression_prior_weight: float,
    iterations: int = 3,
) -> tuple[HeadPose, Tensor, Tensor]:
    """GANFit++'s start (paper 4): move a regressed pose, identity (1, Ki, shared) and expression
    (B, Ke) to the nearest minimum of the full objective's landmark term and priors (eqs. 12-13,
    with its weights), by Gauss-Newton with a backtracking line search.

    Why: the regression network amortises the fit over all photos, so each photo's start sits
    away from that photo's minimum; on the 20 tuning photos most of the gap to GANFit's final
    objective was the prior term (0.028 against 0.0065: the network adds one shared offset to
    every face's identity coefficients). These terms need no rendering, so three Gauss-Newton
    steps cost about 60 ms, against about 90 ms per step of the full objective, and they
    brought the objective after 60 full steps from 0.195 to GANFit's 0.176
    (docs/fast-ganfit-results.md). Expressions stay in the model's range, identity within 3 std.
    """
    batch = expression.shape[0]
    dtype = identity.dtype
    ki, ke = identity.shape[1], expression.shape[1]
    index = model.landmark_indices
    id_std, exp_std = model.identity_std.to(dtype), model.expression_std.to(dtype)
    low, high = model.expression_min.to(dtype), model.expression_max.to(dtype)
    width, height = image_size[:, 0], image_size[:, 1]
    # Landmark residuals scaled so that their squared norm is the weighted batch-mean of eq. 12.
    scale = (landmark_weight / (batch * landmarks.shape[1])) ** 0.5 / interocular(landmarks)[:, None, None]

    def unpack(x: Tensor) -> tuple[HeadPose, Tensor, Tensor]:
        rigid = x[ki + batch * ke:].view(batch, 6)
        return (HeadPose(rigid[:, :3], rigid[:, 3:5], rigid[:, 5], pose.focal), x[:ki][None],
                x[ki:ki + batch * ke].view(batch, ke))

    def residual(x: Tensor) -> Tensor:
        p, c, e = unpack(x)
        points = model.vertices(c.expand(batch, -1) * id_std, e, indices=index)
        projected = p.camera().project(points, width, height)[..., :2]
        return ((projected - landmarks) * scale).reshape(-1)

    # The priors as a diagonal quadratic; the pose has none.
    prior = torch.cat([torch.full((ki,), identity_prior_weight, dtype=dtype),
                       (expression_prior_weight / exp_std**2).repeat(batch) / batch,
                       torch.zeros(batch * 6, dtype=dtype)])

    def objective(x: Tensor) -> float:
        r = residual(x)
        return float(r @ r + (prior * x * x).sum())

    def feasible(x: Tensor) -> Tensor:
        x = x.clone()
        x[:ki].clamp_(-3.0, 3.0)
        x[ki:ki + batch * ke] = torch.maximum(torch.minimum(x[ki:ki + batch * ke].view(batch, ke), high), low).reshape(-1)
        return x

    rigid = torch.cat([pose.rotation, pose.offset, pose.log_depth[:, None]], -1).reshape(-1)
    x = torch.cat([identity.reshape(-1), expression.reshape(-1), rigid]).detach()
    value = objective(x)
    for _ in range(iterations):
        with torch.enable_grad():
            jacobian = torch.autograd.functional.jacobian(residual, x, vectorize=True)
        r = residual(x)
        hessian = jacobian.T @ jacobian + torch.diag(prior)
        hessian = hessian + 1e-3 * torch.diag(hessian.diagonal())  # Levenberg's damping, for the pose
        step = torch.linalg.solve(hessian, -(jacobian.T @ r + prior * x))
        for shrink in (1.0, 0.5, 0.25, 0.125, 0.0625):
            candidate = feasible(x + shrink * step)
            candidate_value = objective(candidate)
            if candidate_value < value:
                x, value = candidate, candidate_value
                break
        else:
            break  # no step lowers it: already at a minimum
    p, c, e = unpack(x)
    return p.detach(), c.detach(), e.detach()
