"""Adam (Kingma and Ba, 2015), the optimiser of paper 3.4, for a handful of parameter tensors.

Why not ``torch.optim.Adam``: the first ``step()`` of any torch optimiser imports
``torch._dynamo``, which costs about 2 s on a 2-core CPU: a fifth of the 10 s budget for a
whole landmark-stage fit. The update below is the same as torch's default Adam (no weight
decay, no amsgrad), and a test compares the two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from ganfit.errors import FitDivergedError

#: A stage has run away when its loss ends this many times above where it started *and*
#: above DIVERGED_FLOOR. The rise alone is not enough: Adam's first steps overshoot (on
#: grace_hopper the landmark loss goes 0.0057 -> 0.050 -> 0.0072), so a 5-step fit can end
#: above its start. With ``--lr 1`` the loss rose 58x, to 0.33, and the head ended 53% of the
#: eye distance off the photo.
DIVERGED_RISE = 3.0
#: The landmark loss is the mean squared distance / eye-corner distance squared: 0.0625 is
#: landmarks a quarter of the eye-corner distance off (RMS), far beyond any fit that worked.
DIVERGED_FLOOR = 0.0625


class Adam:
    """Minimal Adam; parameters whose ``grad`` is None are skipped that step, as in torch."""

    def __init__(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self._state: dict[int, tuple[Tensor, Tensor, int]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            m, v, t = self._state.get(i, (torch.zeros_like(p), torch.zeros_like(p), 0))
            t += 1
            m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - beta1**t))
            self._state[i] = (m, v, t)


def check_finite_loss(stage: str, step: int, loss: float, hint: str) -> None:
    """Stop at the first step whose loss is infinite or NaN, instead of finishing a fit whose
    parameters are garbage (a camera at its own look-at point, non-finite landmarks)."""
    if not math.isfinite(loss):
        raise FitDivergedError(f"the {stage} diverged at step {step + 1} (its loss became {loss}); {hint}")


def check_loss_fell(stage: str, losses: list[float], hint: str) -> None:
    """A stage whose loss ended far above its start ran away, though every value was finite."""
    if len(losses) >= 2 and losses[-1] > max(DIVERGED_RISE * losses[0], DIVERGED_FLOOR):
        raise FitDivergedError(
            f"the {stage} diverged (its loss rose from {losses[0]:.3g} to {losses[-1]:.3g}); {hint}")
