"""The reconstruction modes as the add-on offers them (paper section 4), and the engine options
each mode and quality preset sends. No bpy: the panel, the operator and the tests read it.

The modes, their order, names and one-line help, the options each refuses, GANFit++'s default
steps, the regression network's licence and the texture sources come from the engine's
``protocol.py`` through the seam (``seam.py``). The engine's step defaults the presets describe are mirrored here and
checked against the engine by tests/blender/test_modes.py.
"""

from __future__ import annotations

from typing import Any

from .seam import protocol

#: The engine's modes in its order (``ganfit``, ``fast``, ``ganfit++``) and the default.
MODES: tuple[str, ...] = tuple(protocol.MODES)
DEFAULT_MODE: str = protocol.DEFAULT_MODE

#: Options each mode refuses with an error event: fast runs no optimisation; GANFit++ skips
#: the landmark and lighting stages.
UNUSED_BY_MODE: dict[str, tuple[str, ...]] = {mode: tuple(keys) for mode, keys in protocol.UNUSED_BY_MODE.items()}
#: The shipped regression network's terms.
REGRESSOR_LICENCE: str = protocol.REGRESSOR_LICENCE
#: The engine's defaults for the options the presets set (backend/ganfit/fit/settings.py), and
#: GANFit++'s full-objective steps when none are given (a third of 60).
#: Where the final albedo comes from (the request's ``texture_source``) and the engine's default.
TEXTURE_SOURCES: tuple[str, ...] = tuple(protocol.TEXTURE_SOURCES)
DEFAULT_TEXTURE_SOURCE: str = protocol.DEFAULT_TEXTURE_SOURCE
#: The shipped texture model's terms. The protocol states none of its own; the shipped GAN is
#: trained on the regressor's data (backend/ganfit/models/data/texture_gan.json says so, and
#: tests/blender/test_modes.py checks the two agree).
TEXTURE_MODEL_LICENCE: str = REGRESSOR_LICENCE
#: The Texture menu's names and tooltips per source; the menu lists Blend first.
_TEXTURE_SOURCE_TEXT: dict[str, tuple[str, str]] = {
    "blend": ("Blend", "Skin from the photo, the rest from the texture model: no hair, hat or background on the "
                       "head, white eyes and teeth, ready for a hair system (with no hair, the head looks a little "
                       "less like the person). The texture model is trained on " + TEXTURE_MODEL_LICENCE),
    "photo": ("Photo (keep hair)", "The photo wherever it is seen: hair and hats painted onto the scalp, as the "
                                   "photo shows them"),
}
ENGINE_DEFAULTS: dict[str, int] = {"steps": 300, "lighting_steps": 80, "fit_steps": 60, "texture_size": 512}
GANFIT_PLUS_FIT_STEPS: int = protocol.GANFIT_PLUS_FIT_STEPS

#: Quality presets: (identifier, name) in menu order. The identifiers stay as in earlier
#: versions (saved files and scripts use them); "FAST" shows as *Draft* so that it is not
#: confused with the Fast-GANFit mode.
PRESET_NAMES: tuple[tuple[str, str], ...] = (("FAST", "Draft"), ("DEFAULT", "Default"), ("HIGH", "High"))
#: Engine options per mode and preset; an empty dict is the engine's defaults. Each mode's
#: presets set only options that mode uses. GANFit++ runs a third of GANFit's full-objective
#: steps (the engine's measured ratio, docs/regressor.md); fast has no steps, only the texture size.
PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "ganfit": {
        "FAST": {"steps": 150, "lighting_steps": 20, "fit_steps": 15, "texture_size": 512},
        "DEFAULT": {},
        "HIGH": {"steps": 600, "lighting_steps": 160, "fit_steps": 150, "texture_size": 2048},
    },
    "ganfit++": {
        "FAST": {"fit_steps": 5, "texture_size": 512},
        "DEFAULT": {},
        "HIGH": {"fit_steps": 50, "texture_size": 2048},
    },
    "fast": {
        "FAST": {"texture_size": 512},
        "DEFAULT": {},
        "HIGH": {"texture_size": 2048},
    },
}


def uses(mode: str, option: str) -> bool:
    """Whether ``mode`` uses (accepts) the engine option ``option``."""
    return option not in UNUSED_BY_MODE.get(mode, ())


def uses_regressor(mode: str) -> bool:
    """Whether ``mode`` runs the regression network trained on UTKFace (fast and ganfit++)."""
    return mode != "ganfit"


def fits(mode: str) -> bool:
    """Whether ``mode`` runs a fit (so the live preview has something to show)."""
    return uses(mode, "fit_steps")


def mode_name(mode: str) -> str:
    """The menu's name for ``mode``: the engine's one line up to its colon (``Fast-GANFit``)."""
    line: str = protocol.MODE_HELP.get(mode, "")
    name, colon, _ = line.partition(":")
    return name.strip() if colon and name.strip() else mode


def mode_tooltip(mode: str) -> str:
    """The engine's one line for ``mode``, and the network's licence where the mode uses it."""
    line: str = protocol.MODE_HELP.get(mode, mode)
    if uses_regressor(mode):
        line += f". Its regression network is trained on {REGRESSOR_LICENCE}"
    return line


def mode_items() -> list[tuple[str, str, str, int]]:
    """The Mode menu's items: (identifier, name, tooltip, number). Identifiers are the engine's
    mode names in upper case (``GANFIT``, ``FAST``, ``GANFIT++``); numbers follow the engine's
    order, so ``GANFIT`` keeps the value earlier versions stored."""
    return [(mode.upper(), mode_name(mode), mode_tooltip(mode), number) for number, mode in enumerate(MODES)]


def engine_mode(identifier: str) -> str:
    """The protocol's mode for a Mode menu identifier (``GANFIT++`` -> ``ganfit++``)."""
    mode = identifier.lower()
    if mode not in MODES:
        raise ValueError(f"unknown mode {identifier!r}; the engine offers {', '.join(MODES)}")
    return mode


def preset_options(mode: str, preset: str) -> dict[str, Any]:
    """The engine options a preset sends in ``mode``: only options the mode uses."""
    return {key: value for key, value in PRESETS[mode][preset].items() if uses(mode, key)}


def effective_settings(mode: str, preset: str) -> dict[str, int]:
    """What the engine will run for this mode and preset: the preset's options over the mode's
    defaults, without the options the mode does not use."""
    defaults = dict(ENGINE_DEFAULTS)
    if mode == "ganfit++":
        defaults["fit_steps"] = GANFIT_PLUS_FIT_STEPS
    merged = {**defaults, **preset_options(mode, preset)}
    return {key: value for key, value in merged.items() if uses(mode, key)}


def preset_summary(mode: str, preset: str) -> str:
    """One line on what the preset runs in this mode, e.g. ``20 fit steps after the network,
    512 px texture``; the panel shows it under the Quality menu and in the preset's tooltip."""
    run = effective_settings(mode, preset)
    texture = f"{run['texture_size']} px texture"
    if not fits(mode):
        return f"One network pass, no fitting steps; {texture}"
    if "steps" not in run:
        return f"Network pass, then {run['fit_steps']} full-objective steps; {texture}"
    return (f"{run['steps']} landmark, {run['lighting_steps']} lighting, {run['fit_steps']} full-objective steps; "
            f"{texture}")


def preset_items(mode: str) -> list[tuple[str, str, str, int]]:
    """The Quality menu's items in ``mode``: (identifier, name, tooltip, number)."""
    items = []
    for number, (identifier, name) in enumerate(PRESET_NAMES):
        tooltip = preset_summary(mode, identifier)
        if identifier == "DEFAULT":
            tooltip = f"The engine's defaults: {tooltip[0].lower()}{tooltip[1:]}"
        elif identifier == "HIGH" and fits(mode):
            tooltip += " (slowest)"
        items.append((identifier, name, tooltip, number))
    return items


def texture_source_items() -> list[tuple[str, str, str, int]]:
    """The Texture menu's items: (identifier, name, tooltip, number). Identifiers are the engine's
    sources in upper case; numbers follow the engine's order (stable in saved files), the menu
    lists Blend first."""
    items = [(source.upper(), *_TEXTURE_SOURCE_TEXT.get(source, (source.capitalize(), source)), number)
             for number, source in enumerate(TEXTURE_SOURCES)]
    return sorted(items, key=lambda item: item[0] != "BLEND")


def engine_texture_source(identifier: str) -> str:
    """The protocol's ``texture_source`` for a Texture menu identifier (``BLEND`` -> ``blend``)."""
    source = identifier.lower()
    if source not in TEXTURE_SOURCES:
        raise ValueError(f"unknown texture source {identifier!r}; the engine offers {', '.join(TEXTURE_SOURCES)}")
    return source


def cleans_texture(texture_source: str) -> bool:
    """Whether "Clean texture" applies with ``texture_source``: the blend already keeps only skin
    from the photo, and the engine refuses the two together."""
    return texture_source != "blend"
