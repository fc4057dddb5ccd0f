"""Results outlive the session (issue 18, item 1), in real Blender: an unsaved file's results go
to the extension's lasting user folder, not Blender's temporary folder; saving the .blend moves
them beside it, and the reopened file still has its texture and exports."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import BPY_MISSING

bpy = pytest.importorskip("bpy", reason=BPY_MISSING)

from .conftest import empty_scene  # noqa: E402


@pytest.fixture()
def storage(installed_addon: str):
    return sys.modules[f"{installed_addon}.result_storage"]


def test_an_unsaved_file_keeps_results_in_a_lasting_folder(storage):
    empty_scene()
    assert not bpy.data.filepath
    folder = storage.new_result_folder(Path("/photos/grace hopper.jpg"))
    root = storage.lasting_results_root()
    assert folder.parent == root and folder.name.startswith("grace_hopper") and not folder.exists()
    temp = Path(bpy.app.tempdir or "/nonexistent-tempdir").resolve()
    assert temp not in folder.resolve().parents  # Blender deletes its temp folder on quit


def test_saving_moves_results_beside_the_blend_and_reopening_finds_them(storage, engine_result: Path,
                                                                        installed_addon: str, tmp_path: Path):
    scene_import = sys.modules[f"{installed_addon}.scene_import"]
    empty_scene()
    lasting = storage.new_result_folder(Path("grace_hopper.jpg"))
    shutil.copytree(engine_result, lasting)
    built = scene_import.import_result(bpy.context, lasting)
    head_name = built.head.name

    blend = tmp_path / "project" / "scene.blend"
    blend.parent.mkdir()
    assert bpy.ops.wm.save_as_mainfile(filepath=str(blend)) == {"FINISHED"}

    beside = blend.parent / "ganfit_results" / lasting.name
    assert not lasting.exists(), "the lasting copy should have moved"
    for name in ("result.json", "texture.png", "head.glb", "head.obj"):
        assert (beside / name).is_file(), name
    assert Path(str(bpy.data.objects[head_name]["ganfit_result"])) == beside

    # A new session: Blender's temp folder is gone, the file is reopened from disk.
    empty_scene()
    assert bpy.ops.wm.open_mainfile(filepath=str(blend)) == {"FINISHED"}
    textures = [image for image in bpy.data.images if image.name.endswith("texture")]
    assert len(textures) == 1
    image = textures[0]
    assert Path(bpy.path.abspath(image.filepath)).resolve() == (beside / "texture.png").resolve()
    assert image.filepath.startswith("//"), image.filepath  # relative: the folder can be moved whole
    image.reload()
    assert image.has_data or image.size[0] > 0
    assert tuple(image.size) != (0, 0)
    empty_scene()


def test_results_from_elsewhere_stay_where_they_are(storage, engine_result: Path, installed_addon: str,
                                                    tmp_path: Path):
    scene_import = sys.modules[f"{installed_addon}.scene_import"]
    empty_scene()
    mine = tmp_path / "my_results" / "grace"
    shutil.copytree(engine_result, mine)
    scene_import.import_result(bpy.context, mine)
    blend = tmp_path / "elsewhere" / "scene.blend"
    blend.parent.mkdir()
    assert bpy.ops.wm.save_as_mainfile(filepath=str(blend)) == {"FINISHED"}
    assert (mine / "result.json").is_file()
    assert not (blend.parent / "ganfit_results").exists()
    empty_scene()
