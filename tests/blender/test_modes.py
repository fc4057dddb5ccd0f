"""The Mode menu (issue 19, item 5): GANFit, Fast-GANFit and GANFit++ as the engine's seam lists
them, the licence of the regression network in the tooltips, and quality presets that send only
what the chosen mode uses. The facts the add-on mirrors from the engine are checked against the
engine's own definitions here, so they cannot drift. The end-to-end runs of each mode are in
test_reconstruct.py (they share its engine)."""

from __future__ import annotations

import itertools
import sys

import pytest

from .conftest import BPY_MISSING, ROOT

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)


@pytest.fixture(scope="module")
def modes(installed_addon: str):
    return sys.modules[f"{installed_addon}.modes"]


def test_engine_facts_reach_the_addon(modes) -> None:
    """The modes, the options each refuses, GANFit++'s steps and the network's licence come
    through the seam; the step defaults the presets describe are mirrored and must agree."""
    from ganfit import protocol
    from ganfit.fit.settings import FitSettings

    assert modes.MODES == protocol.MODES and modes.DEFAULT_MODE == protocol.DEFAULT_MODE
    assert modes.UNUSED_BY_MODE == protocol.UNUSED_BY_MODE
    assert modes.GANFIT_PLUS_FIT_STEPS == protocol.GANFIT_PLUS_FIT_STEPS
    assert "non-commercial" in modes.REGRESSOR_LICENCE
    defaults = FitSettings()
    assert modes.ENGINE_DEFAULTS == {"steps": defaults.landmark.steps, "lighting_steps": defaults.appearance.steps,
                                     "fit_steps": defaults.joint.steps, "texture_size": defaults.appearance.texture_size}
    assert "torch" not in sys.modules


def test_texture_sources_come_from_the_engine(modes) -> None:
    """The Texture menu lists the engine's sources with its default; the blend's tooltip names the
    shipped texture model's licence, which is the one texture_gan.json records."""
    import json
    from pathlib import Path

    from ganfit import protocol

    assert modes.TEXTURE_SOURCES == protocol.TEXTURE_SOURCES
    assert modes.DEFAULT_TEXTURE_SOURCE == protocol.DEFAULT_TEXTURE_SOURCE
    items = modes.texture_source_items()
    assert {i[0] for i in items} == {s.upper() for s in protocol.TEXTURE_SOURCES} and items[0][0] == "BLEND"
    assert sorted(i[3] for i in items) == list(range(len(items)))
    shipped = Path(protocol.__file__).parent / "models" / "data" / "texture_gan.json"
    assert json.loads(shipped.read_text())["data"]["licence"] == modes.TEXTURE_MODEL_LICENCE
    assert modes.TEXTURE_MODEL_LICENCE in dict((i[0], i[2]) for i in items)["BLEND"]
    assert modes.engine_texture_source("BLEND") == "blend"
    assert not modes.cleans_texture("blend") and modes.cleans_texture("photo")
    with pytest.raises(ValueError, match="texture source"):
        modes.engine_texture_source("HAIR")


def test_every_mode_and_preset_is_accepted_by_the_engine(modes) -> None:
    """What the add-on sends for each mode and preset passes the engine's own option check
    (it refuses options a mode does not use) and runs the steps the tooltip promises."""
    from ganfit.settings import build_settings

    for mode, (preset, _) in itertools.product(modes.MODES, modes.PRESET_NAMES):
        options = modes.preset_options(mode, preset)
        assert not set(options) & set(modes.UNUSED_BY_MODE.get(mode, ())), (mode, preset)
        built = build_settings({**options, "mode": mode, "device": "cpu"}, "protocol")
        assert built.mode == mode
        run = modes.effective_settings(mode, preset)
        assert run["texture_size"] == built.appearance.texture_size, (mode, preset)
        if modes.fits(mode):
            assert run["fit_steps"] == built.joint.steps, (mode, preset)
        if "steps" in run:
            assert (run["steps"], run["lighting_steps"]) == (built.landmark.steps, built.appearance.steps)
    # what the engine refuses, so the add-on must not send it
    from ganfit.errors import GanfitError

    with pytest.raises(GanfitError, match="not used by mode fast"):
        build_settings({**modes.PRESETS["ganfit"]["FAST"], "mode": "fast"}, "protocol")
    assert "torch" not in sys.modules


def test_mode_menu_lists_the_engines_modes(modes, installed_addon: str) -> None:
    from ganfit import protocol

    prop = bpy.types.Scene.bl_rna.properties["ganfit_reconstruct"].fixed_type.bl_rna.properties["mode"]
    items = list(prop.enum_items)
    assert [i.identifier for i in items] == ["GANFIT", "FAST", "GANFIT++"]
    assert [i.name for i in items] == ["GANFit", "Fast-GANFit", "GANFit++"]
    assert prop.default == protocol.DEFAULT_MODE.upper()
    for item, mode in zip(items, protocol.MODES):
        assert item.description.startswith(protocol.MODE_HELP[mode])
        assert ("non-commercial" in item.description) == (mode in ("fast", "ganfit++")), item.description
        assert "later" not in item.description
    assert "coming later" not in (ROOT / "ganfit_blender/reconstruct_op.py").read_text(encoding="utf-8")


def test_quality_tooltips_follow_the_mode(modes) -> None:
    """The Quality menu's items say what they run in the chosen mode: no steps in fast mode."""
    settings = bpy.context.scene.ganfit_reconstruct
    describe = bpy.types.UILayout.enum_item_description
    try:
        settings.mode, settings.preset = "GANFIT", "HIGH"
        assert "600 landmark" in describe(settings, "preset", "HIGH")
        assert bpy.types.UILayout.enum_item_name(settings, "preset", "FAST") == "Draft"
        settings.mode = "FAST"
        assert settings.preset == "HIGH"  # the preset stays when the mode changes
        assert describe(settings, "preset", "HIGH") == "One network pass, no fitting steps; 2048 px texture"
        settings.mode = "GANFIT++"
        assert describe(settings, "preset", "DEFAULT").endswith("network pass, then 20 full-objective steps; 512 px texture")
    finally:
        settings.mode, settings.preset = "GANFIT", "DEFAULT"
