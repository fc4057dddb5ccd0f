"""Settings from user input (ganfit.settings): one set of rules for CLI flags and protocol
options (issue 16, classes 5 and 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ganfit.errors import GanfitError
from ganfit.fit.settings import FitSettings
from ganfit.settings import OPTIONS, build_settings


def _refused(options, source, *needles: str) -> str:
    with pytest.raises(GanfitError) as caught:
        build_settings(options, source)
    message = str(caught.value)
    assert "\n" not in message and "internal error" not in message
    for needle in needles:
        assert needle in message, message
    return message


# Each bad value as the command line types it and as a request sends it: both are refused,
# and both messages name the option and its range.
BAD = [
    ("lr", "nan", float("nan"), "above 0"),
    ("lr", "inf", float("inf"), "above 0"),
    ("lr", "1e10", 1e10, "at most 1"),
    ("lr", "-1", -1, "above 0"),
    ("lr", "abc", "abc", "a number"),
    ("fit_lr", "0", 0, "above 0"),
    ("steps", "-5", -5, "from 1 to 100000"),
    ("steps", "2.5", 2.5, "whole number"),
    ("fit_steps", "-1", -1, "from 0 to 100000"),
    ("seed", str(2**70), 2**70, "4294967295"),
    ("seed", "-1", -1, "4294967295"),
    ("face", "-1", -1, "from 0 to 99"),
    ("texture_size", "8", 8, "from 16 to 4096"),
    ("texture_size", "100000", 100000, "from 16 to 4096"),
    ("lighting_steps", "0", 0, "from 1"),
]


@pytest.mark.parametrize("key,typed,sent,needle", BAD)
def test_the_same_rule_refuses_a_value_from_either_side(key, typed, sent, needle):
    flag = "--" + key.replace("_", "-")
    _refused({key: typed}, "cli", flag, needle)
    _refused({key: sent}, "protocol", f"option {key}", needle)


@pytest.mark.parametrize("value", [None, True, "12", [1], {"a": 1}])
def test_protocol_numbers_must_be_json_numbers(value):
    """``steps: true`` and ``lr: null`` were accepted or crashed; now each names the option."""
    for key in ("steps", "lr"):
        _refused({key: value}, "protocol", f"option {key}", "expected")


@pytest.mark.parametrize("options", [[1, 2], "fast please", 5, None])
def test_options_must_be_an_object(options):
    message = _refused(options, "protocol", "options must be a JSON object")
    assert "unknown option" not in message  # "fast please" used to list its letters


def test_unknown_options_are_named():
    _refused({"stepz": 3, "colour": 1}, "protocol", "stepz", "colour", "known:")


@pytest.mark.parametrize("weights,needle", [
    ({"pixel": -1}, "loss_weights.pixel"), ({"identity": 1e300}, "1000000"), ({"colour": 1}, "unknown term"),
    ({"pixel": "1"}, "loss_weights.pixel"), ([1], "object of term"),
])
def test_loss_weights_follow_the_same_rules(weights, needle):
    _refused({"loss_weights": weights}, "protocol", needle)


def test_cli_loss_weight_names_the_term():
    _refused({"loss_weights": {"identity": "1e300"}}, "cli", "--loss-weight identity=1e300", "1000000")


def test_device_clean_texture_and_texture_model_rules():
    _refused({"device": "gpu"}, "protocol", "option device", "cpu, cuda")
    _refused({"clean_texture": "yes"}, "protocol", "option clean_texture", "true or false")
    _refused({"texture_model": "a\0b"}, "protocol", "option texture_model")
    _refused({"texture_model": "/no/such/model.npz"}, "cli", "--texture-model", "file not found")
    _refused({"texture_refine_steps": 5}, "protocol", "option texture_refine_steps", "texture_model")


def test_good_values_set_the_fields_they_name():
    settings = build_settings({"steps": 7, "lr": 0.5, "lighting_steps": 3, "texture_size": 64, "fit_steps": 0,
                               "fit_lr": 0.02, "seed": 2**32 - 1, "face": 1, "device": "CPU", "clean_texture": True,
                               "loss_weights": {"pixel": 0, "identity": 2.5}}, "protocol")
    assert (settings.landmark.steps, settings.landmark.learning_rate) == (7, 0.5)
    assert (settings.appearance.steps, settings.appearance.texture_size) == (3, 64)
    assert (settings.joint.steps, settings.joint.learning_rate) == (0, 0.02)
    assert (settings.seed, settings.face_index, settings.device) == (2**32 - 1, 1, "cpu")
    assert settings.appearance.skin_only_outside_face is True
    assert (settings.joint.pixel_weight, settings.joint.identity_weight) == (0.0, 2.5)
    cli = build_settings({"steps": "7", "lr": "0.5", "lighting_steps": "3", "texture_size": "64", "fit_steps": "0",
                          "fit_lr": "0.02", "seed": str(2**32 - 1), "face": "1", "device": "cpu", "clean_texture": True,
                          "loss_weights": {"pixel": "0", "identity": "2.5"}}, "cli")
    assert cli == settings


def test_nothing_given_is_the_defaults():
    """The default mode (protocol.DEFAULT_MODE, GANFit++) with its step count; every other
    setting is FitSettings()'s."""
    from dataclasses import replace

    from ganfit.protocol import DEFAULT_MODE, GANFIT_PLUS_FIT_STEPS

    base = FitSettings()
    expected = replace(base, mode=DEFAULT_MODE, joint=replace(base.joint, steps=GANFIT_PLUS_FIT_STEPS))
    assert build_settings({}, "protocol") == expected
    assert build_settings({key: None for key in OPTIONS}, "cli") == expected


def test_a_usage_error_answers_before_torch_loads(tmp_path):
    """Checking arguments used to import torch first (2-3 s, 300 MB for a typo)."""
    code = ("import sys\nfrom ganfit.cli import main\n"
            f"rc = main(['reconstruct', 'photo.jpg', '-o', {str(tmp_path / 'o')!r}, '--lr', 'nan'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("ganfit: error: --lr nan:") and proc.stderr.count("\n") == 1
