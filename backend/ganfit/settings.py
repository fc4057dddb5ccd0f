"""Settings built from user input in one place, with one set of rules, for the command line's
flags and the serve protocol's ``options`` alike (DESIGN.md, "Where the house goes next").

Every option is declared once in ``OPTIONS``: its type, its accepted range and the
``FitSettings`` field it sets. ``build_settings`` checks values against those rules and builds
the frozen ``FitSettings``; a bad value is a ``GanfitError`` whose one line names the option
as the user spelled it (``--fit-lr`` on the command line, ``option fit_lr`` in a request) and
the accepted range. Nothing here imports torch, so a usage error is answered in milliseconds:
the one exception is ``texture_model="gan"``, resolved last, after every other check.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from .errors import GanfitError
from .fit.settings import FitSettings
from .protocol import (DEFAULT_MODE, GANFIT_ONLY, GANFIT_PLUS_FIT_STEPS, MODES,  # stdlib only, shared with the add-on
                       TEXTURE_SOURCES, UNUSED_BY_MODE)

__all__ = ["OPTIONS", "LOSS_TERMS", "Source", "build_settings", "option_name", "parse_loss_weights"]

#: Where the values come from: command-line strings or a request's JSON values.
Source = Literal["cli", "protocol"]

#: Names of the objective's terms (eq. 13) -> JointStageSettings fields.
LOSS_TERMS = {
    "identity": "identity_weight",
    "random-pose": "random_pose_weight",
    "content": "content_weight",
    "pixel": "pixel_weight",
    "landmark": "landmark_weight",
    "identity-prior": "identity_prior_weight",
    "expression-prior": "expression_prior_weight",
    "light-prior": "light_prior_weight",
    "texture-prior": "texture_prior_weight",
}

#: The largest seed: torch's and numpy's generators both take any 32-bit unsigned seed.
MAX_SEED = 2**32 - 1
#: Largest weight of one loss term: the defaults span 1e-5 .. 50, so 1e6 leaves room to
#: experiment while refusing values (1e300) that overflow the objective on the first step.
MAX_LOSS_WEIGHT = 1e6
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d{1,3})?)$")


@dataclass(frozen=True)
class NumberOption:
    """A whole number or real option: its range and the ``FitSettings`` field it sets."""

    key: str  # the protocol's name; the command line's flag is --key-with-dashes
    kind: type  # int or float
    low: float
    high: float
    field: str  # "landmark.steps": stage settings object . field
    low_open: bool = False  # True: ``low`` itself is refused (a learning rate of 0)

    def describe(self) -> str:
        noun = "a whole number" if self.kind is int else "a number"
        low, high = _fmt(self.low), _fmt(self.high)
        if self.low_open:
            return f"{noun} above {low} and at most {high}"
        return f"{noun} from {low} to {high}"


def _fmt(bound: float) -> str:
    """A range bound as people write it: 1000000, not 1e+06; 0.5 stays 0.5."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


OPTIONS: dict[str, NumberOption] = {
    option.key: option
    for option in (
        NumberOption("steps", int, 1, 100_000, "landmark.steps"),
        NumberOption("lr", float, 0.0, 1.0, "landmark.learning_rate", low_open=True),
        NumberOption("lighting_steps", int, 1, 100_000, "appearance.steps"),
        NumberOption("texture_size", int, 16, 4096, "appearance.texture_size"),
        NumberOption("fit_steps", int, 0, 100_000, "joint.steps"),
        NumberOption("fit_lr", float, 0.0, 1.0, "joint.learning_rate", low_open=True),
        NumberOption("texture_refine_steps", int, 0, 100_000, "joint.texture_refine_steps"),
        NumberOption("seed", int, 0, MAX_SEED, "seed"),
        NumberOption("face", int, 0, 99, "face_index"),
    )
}

#: Options that are not numbers, and the request-only fields that are not options.
OTHER_OPTIONS = ("device", "clean_texture", "texture_source", "texture_model", "loss_weights", "mode", "regressor")



def option_name(key: str, source: Source) -> str:
    """How the user spelled an option: ``--fit-lr`` or ``option fit_lr``."""
    return f"--{key.replace('_', '-')}" if source == "cli" else f"option {key}"


def _number(option: NumberOption, value: Any, source: Source, name: str | None = None) -> int | float:
    """One value checked against its option's type and range (strings only from the CLI)."""
    name = name or option_name(option.key, source)
    wanted = f"expected {option.describe()}"
    if isinstance(value, str) and source == "cli":
        try:
            parsed: Any = int(value, 10) if option.kind is int else float(value)
        except ValueError:
            raise GanfitError(f"{name}{'' if name.endswith('=') else ' '}{value}: {wanted}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
        option.kind is int and not isinstance(value, int)
    ):
        raise GanfitError(f"{name}: {wanted}, got {_show(value)}")
    else:
        parsed = value
    shown = _quote(value, source)
    if name.endswith("="):  # --loss-weight pixel=-1
        name, shown = name + str(shown), ""
    if option.kind is float:
        parsed = float(parsed)
        if not math.isfinite(parsed):
            raise GanfitError(f"{name} {shown}".rstrip() + f": {wanted}")
    too_low = parsed <= option.low if option.low_open else parsed < option.low
    if too_low or parsed > option.high:
        raise GanfitError(f"{name} {shown}".rstrip() + f": {wanted}")
    return parsed


def _quote(value: Any, source: Source) -> str:
    """A value as the user typed it (command line) or as JSON would show it (protocol)."""
    return str(value) if source == "cli" and isinstance(value, str) else _show(value)


def _show(value: Any) -> str:
    """A JSON value as a short, one-line quote for an error message, spelled as JSON."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def parse_loss_weights(items: list[str]) -> dict[str, str]:
    """The command line's repeated ``--loss-weight TERM=W`` as {term: "W"} (checked later)."""
    weights: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in LOSS_TERMS:
            raise GanfitError(f"--loss-weight {item}: expected TERM=W with TERM one of {', '.join(LOSS_TERMS)}")
        weights[name] = value
    return weights


def _loss_weights(weights: Any, source: Source) -> dict[str, float]:
    """Loss weights -> JointStageSettings field values; 0 switches a term off."""
    if not isinstance(weights, dict):
        raise GanfitError(f"{option_name('loss_weights', source)}: expected an object of term: weight, "
                          f"terms {', '.join(LOSS_TERMS)}")
    rule = NumberOption("loss_weight", float, 0.0, MAX_LOSS_WEIGHT, "")
    fields: dict[str, float] = {}
    for term, value in weights.items():
        name = f"--loss-weight {term}=" if source == "cli" else f"option loss_weights.{term}"
        if term not in LOSS_TERMS:
            raise GanfitError(f"{name.rstrip('=')}: unknown term; terms: {', '.join(LOSS_TERMS)}")
        fields[LOSS_TERMS[term]] = _number(rule, value, source, name)
    return fields


def _set(settings: FitSettings, field: str, value: Any) -> FitSettings:
    """``settings`` with one dotted field replaced ("joint.steps" or "seed")."""
    stage, _, name = field.partition(".")
    if not name:
        return replace(settings, **{stage: value})
    return replace(settings, **{stage: replace(getattr(settings, stage), **{name: value})})


def build_settings(options: Any, source: Source) -> FitSettings:
    """``FitSettings`` from user input: command-line values (strings, None when not given) or
    a request's ``options`` object. Unknown names, wrong types and values out of range are
    refused in one line that names the option and what it accepts."""
    where = "options" if source == "protocol" else "arguments"
    if not isinstance(options, dict):
        raise GanfitError(f"{where} must be a JSON object such as {{\"steps\": 100}}, got {_show(options)}")
    options = {key: value for key, value in options.items() if value is not None or source == "protocol"}
    known = sorted([*OPTIONS, *OTHER_OPTIONS])
    unknown = sorted(str(key) for key in options if key not in OPTIONS and key not in OTHER_OPTIONS)
    if unknown:
        raise GanfitError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")

    settings = FitSettings()
    for key, option in OPTIONS.items():
        if key in options:
            settings = _set(settings, option.field, _number(option, options[key], source))
    if "loss_weights" in options:
        settings = replace(settings, joint=replace(settings.joint, **_loss_weights(options["loss_weights"], source)))
    if "device" in options:
        device = options["device"]
        if not isinstance(device, str) or not _DEVICE.match(device.lower()):
            raise GanfitError(f"{option_name('device', source)} {_quote(device, source)}: expected cpu, cuda, cuda:N, mps or auto")
        settings = replace(settings, device=device.lower())
    if "clean_texture" in options:
        clean = options["clean_texture"]
        if not isinstance(clean, bool):
            raise GanfitError(f"{option_name('clean_texture', source)}: expected true or false, got {_show(clean)}")
        settings = _set(settings, "appearance.skin_only_outside_face", clean)
    if "texture_source" in options:
        source_name = options["texture_source"]
        if not isinstance(source_name, str) or source_name not in TEXTURE_SOURCES:
            raise GanfitError(f"{option_name('texture_source', source)} {_quote(source_name, source)}: "
                              f"expected {' or '.join(TEXTURE_SOURCES)}")
        settings = _set(settings, "appearance.texture_source", source_name)
    blend = settings.appearance.texture_source == "blend"
    if blend and settings.appearance.skin_only_outside_face:
        raise GanfitError(f"{option_name('clean_texture', source)}: {option_name('texture_source', source)} blend "
                          "already keeps the photo only where it shows skin: drop one of the two")
    texture_model = options.get("texture_model")
    if texture_model is not None and (not isinstance(texture_model, str) or not texture_model or "\0" in texture_model):
        raise GanfitError(f"{option_name('texture_model', source)}: expected 'gan', 'projected' or the path of a "
                          f"texture model .npz, got {_show(texture_model)}")
    with_model = texture_model not in (None, "projected")
    if settings.appearance.skin_only_outside_face and with_model:
        raise GanfitError(f"{option_name('clean_texture', source)} cleans the photo projected onto the head; "
                          "a texture model makes its own texture: drop one of the two")
    if settings.joint.texture_refine_steps and blend:
        raise GanfitError(f"{option_name('texture_refine_steps', source)}: refines a texture model's map, which "
                          f"{option_name('texture_source', source)} blend replaces by its own; drop one of the two")
    if settings.joint.texture_refine_steps and not with_model:
        raise GanfitError(f"{option_name('texture_refine_steps', source)}: refines a texture model's map; "
                          f"give {option_name('texture_model', source)} too, or drop it")
    settings = _mode(settings, options, source)
    if with_model:
        settings = replace(settings, texture_model=_texture_model_file(str(texture_model), source))
    return settings


def _mode(settings: FitSettings, options: dict[str, Any], source: Source) -> FitSettings:
    """The reconstruction mode (``--mode``, the request's ``mode``) and the regressor's weights;
    an option the mode does not use is refused rather than silently ignored."""

    name = "--mode" if source == "cli" else "'mode'"
    if "mode" in options:
        mode = options["mode"]
    elif any(options.get(key) is not None for key in GANFIT_ONLY):
        mode = "ganfit"  # no mode named: GANFit's own options ask for GANFit (protocol.GANFIT_ONLY)
    else:
        mode = DEFAULT_MODE
    if not isinstance(mode, str) or mode not in MODES:
        raise GanfitError(f"{name} {_quote(mode, source)}: unknown mode; use {', '.join(MODES)}")
    unused = [key for key in UNUSED_BY_MODE.get(mode, ()) if options.get(key) is not None]
    if unused:
        why = ("runs no optimisation" if mode == "fast"
               else "starts from the regression network and skips the landmark and lighting stages")
        flag = "--loss-weight" if unused[0] == "loss_weights" and source == "cli" else option_name(unused[0], source)
        raise GanfitError(f"{flag}: not used by mode {mode}, which {why}; "
                          f"drop it or use {name} ganfit")
    settings = replace(settings, mode=mode)
    if mode == "ganfit++" and options.get("fit_steps") is None:
        settings = _set(settings, "joint.steps", GANFIT_PLUS_FIT_STEPS)
    regressor = options.get("regressor")
    if regressor is not None:
        from pathlib import Path

        if not isinstance(regressor, str) or not regressor or "\0" in regressor or not Path(regressor).is_file():
            raise GanfitError(f"{option_name('regressor', source)} {_quote(regressor, source)}: file not found; "
                              "give the path of regressor weights (.npz), or leave it out for the shipped ones")
        if mode == "ganfit":
            raise GanfitError(f"{option_name('regressor', source)}: only used by modes fast and ganfit++; "
                              f"add {name} fast or drop it")
        settings = replace(settings, regressor=regressor)
    return settings


def _texture_model_file(value: str, source: Source) -> str:
    """'gan' -> the shipped GAN's file; any other value must be an existing file."""
    from pathlib import Path

    name = option_name("texture_model", source)
    if value == "gan":
        from .errors import ModelDataError
        from .texture.model import resolve_texture_model  # imports torch: only for 'gan'

        try:
            resolved = resolve_texture_model(value)
        except ModelDataError as exc:
            raise GanfitError(f"{name} gan: {exc}") from exc
        assert resolved is not None
        return resolved
    if not Path(value).is_file():
        raise GanfitError(f"{name} {value}: file not found; give 'gan', 'projected' or the path of a texture model .npz")
    return value
