"""Expression sliders in real Blender: grouping, Neutral and Fitted buttons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

from .conftest import empty_scene  # noqa: E402


@pytest.fixture(scope="module")
def head(installed_addon: str, engine_result: Path):
    empty_scene()
    assert bpy.ops.ganfit.import_result(directory=str(engine_result)) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    assert obj.type == "MESH"
    return obj


def test_every_arkit_key_has_a_group(head, installed_addon: str) -> None:
    import importlib

    expressions = importlib.import_module(f"{installed_addon}.expressions")
    names = [k.name for k in head.data.shape_keys.key_blocks[1:]]
    assert len(names) == 52
    groups = {expressions.group_of(n) for n in names}
    assert "Other" not in groups
    assert {"Brows", "Eyes", "Cheeks", "Nose", "Jaw", "Mouth"} <= groups
    assert expressions.group_of("jawOpen") == "Jaw" and expressions.group_of("eyeBlinkLeft") == "Eyes"


def test_neutral_then_fitted(head, engine_result: Path) -> None:
    fitted = {e["name"]: e["weight"] for e in json.loads((engine_result / "result.json").read_text())["expressions"]}
    assert any(w > 0.01 for w in fitted.values())
    keys = head.data.shape_keys.key_blocks
    assert bpy.ops.ganfit.expression_reset() == {"FINISHED"}
    assert all(k.value == 0.0 for k in keys[1:])
    keys["jawOpen"].value = 0.8  # the artist plays with a slider
    assert bpy.ops.ganfit.expression_restore() == {"FINISHED"}
    for key in keys[1:]:
        assert key.value == pytest.approx(fitted[key.name], abs=1e-6)


def test_panel_is_registered_and_polls(head) -> None:
    panel = bpy.types.GANFIT_PT_expressions
    assert panel.poll(bpy.context)
    head.select_set(False)
    bpy.context.view_layer.objects.active = None
    assert not panel.poll(bpy.context)
    assert not bpy.ops.ganfit.expression_reset.poll()
