"""The objective of paper 3.3 (eq. 13) as a thing of its own: image formation (eqs. 7-8) and
every loss term (eqs. 9-13) for a batch of photos and their ``FitParams``. GANFit's fitting loop
(``fit.joint_stage``) minimises it; the regression network of section 4 is trained on it."""

from .full import FullObjective, ObjectiveOutput, random_render

__all__ = ["FullObjective", "ObjectiveOutput", "random_render"]
