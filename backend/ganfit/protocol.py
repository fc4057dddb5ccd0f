"""The engine protocol's shared definitions, written once (issue 18, "One seam, defined once").

Standard library only: ``build.py`` copies this file into the Blender extension
(``ganfit_blender/_seam/protocol.py``), where the add-on reads it through
``ganfit_blender/seam.py``; the engine's ``serve.py`` and ``cli.py`` import it directly. So
the protocol's version and the progress stages cannot drift between the two sides.
"""

from __future__ import annotations

#: Changes whenever a request or event changes incompatibly (docs/protocol.md).
PROTOCOL_VERSION = 1

#: Reconstruction modes (paper section 4): "ganfit" optimises, "fast" is the regression
#: network's one forward pass, "ganfit++" starts the fit from it.
MODES = ("ganfit", "fast", "ganfit++")
#: The mode used when a request or command names none: GANFit++, the closest to the person on
#: Table I's 100 held-out photos (dlib turned 25 degrees 0.303 against GANFit's 0.319 and fast
#: mode's 0.306) and within 10 s a photo (2 s of CPU against GANFit's 7.6 s): docs/regressor.md.
#: Without a mode, options only GANFit uses (``GANFIT_ONLY``) select GANFit instead.
DEFAULT_MODE = "ganfit++"
#: One line per mode, for menus and help.
MODE_HELP = {
    "ganfit": "GANFit: fitting by optimisation (paper 3), the slowest",
    "fast": "Fast-GANFit: one pass of the regression network (paper 4), well under a second",
    "ganfit++": "GANFit++: the regression network's answer refined by a short fit (paper 4)",
}

#: Options each mode refuses (a request naming one gets an error event, the CLI a one-line
#: error): fast runs no optimisation; GANFit++ starts the full-objective fit from the
#: regression network and skips the landmark and lighting stages.
UNUSED_BY_MODE: dict[str, tuple[str, ...]] = {
    "fast": ("steps", "lr", "lighting_steps", "fit_steps", "fit_lr", "texture_refine_steps", "loss_weights"),
    "ganfit++": ("steps", "lr", "lighting_steps"),
}
#: Options that only mode ganfit uses: given without a mode, they select it rather than being
#: refused by the default mode (scripts written for GANFit keep working).
GANFIT_ONLY: tuple[str, ...] = UNUSED_BY_MODE["ganfit++"]
#: GANFit++'s full-objective steps when none are given: a third of GANFit's 60, which the
#: convergence benchmark measured enough to reach GANFit's final objective (docs/regressor.md).
GANFIT_PLUS_FIT_STEPS = 20
#: Where the final albedo comes from (``--texture-source``, the request's ``texture_source``):
#: "photo" is the photo projected into UV, seen hair and hats included (the "keep hair" look);
#: "blend" keeps the photo where it shows skin seen squarely and takes the texture model,
#: fitted to that skin, everywhere else (docs/fitting.md).
TEXTURE_SOURCES = ("photo", "blend")
DEFAULT_TEXTURE_SOURCE = "photo"
#: The terms of the shipped regression network (modes fast and ganfit++): those of its data.
REGRESSOR_LICENCE = "UTKFace: non-commercial research purposes only (https://susanqq.github.io/UTKFace/)"

#: A reconstruction's stages in order, each with its share of the whole progress bar (they sum
#: to 1). Measured on the Default preset: the full-objective fit takes most of the time.
STAGE_SHARES: dict[str, float] = {
    "detect": 0.03,
    "regress": 0.01,  # modes fast and ganfit++ (instead of landmarks and lighting)
    "landmarks": 0.12,
    "lighting": 0.15,
    "fitting": 0.61,
    "texture": 0.05,
    "write": 0.03,
}


def stage_spans() -> dict[str, tuple[float, float]]:
    """Each stage's (start, share) on a 0-1 progress bar, from ``STAGE_SHARES`` in order."""
    spans: dict[str, tuple[float, float]] = {}
    start = 0.0
    for stage, share in STAGE_SHARES.items():
        spans[stage] = (start, share)
        start += share
    return spans


def progress_fraction(stage: str, step: int, total: int, default: float = 0.0) -> float:
    """Where a progress event puts the bar (0-1); an unknown stage keeps ``default``."""
    span = stage_spans().get(stage)
    if span is None:
        return default
    start, share = span
    return start + share * (min(step, total) / total if total > 0 else 1.0)
