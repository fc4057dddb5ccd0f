"""The serve protocol (engine side of the Blender seam) over real pipes with the real engine."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

FAST = {"steps": 60, "lighting_steps": 5, "fit_steps": 3, "texture_size": 64}


class Engine:
    """`python -m ganfit serve` as a child process, events read on a thread."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ganfit", "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))  # every stdout line must be a JSON event
        self.events.put(None)

    def send(self, request: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def next(self, timeout: float = 120.0, skip_progress: bool = True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            assert event is not None, "engine exited"
            if not (skip_progress and event["type"] == "progress"):
                return event

    def close(self) -> int:
        if self.proc.poll() is None:
            self.send({"type": "shutdown"})
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def engine():
    e = Engine()
    ready = e.next()
    assert ready["type"] == "ready" and ready["protocol"] == 1
    yield e
    assert e.close() == 0


def test_reconstruct_reports_progress_and_writes_the_result(engine: Engine, grace_path: Path, tmp_path: Path):
    out = tmp_path / "grace"
    engine.send({"type": "reconstruct", "id": "r1", "photos": [str(grace_path)], "output": str(out), "options": FAST})
    stages = set()
    while True:
        event = engine.next(skip_progress=False)
        if event["type"] != "progress":
            break
        assert event["id"] == "r1" and 1 <= event["step"] <= event["total"]
        stages.add(event["stage"])
    assert event == {**event, "type": "done", "id": "r1", "result": str(out)}
    assert {"detect", "landmarks", "lighting", "texture"} <= stages
    assert (out / "result.json").is_file() and (out / "head.glb").is_file()


def test_mesh_updates_stream_the_head_as_it_fits(engine: Engine, grace_path: Path, tmp_path: Path):
    """Asked for, the engine sends the triangles once, then the vertices every MESH_EVERY steps
    and at the landmark stage's end; the last one is (close to: later stages may still refine
    it) the fitted head of the result."""
    from ganfit.io.result import read_result

    out = tmp_path / "live"
    engine.send({"type": "reconstruct", "id": "m1", "photos": [str(grace_path)], "output": str(out),
                 "options": FAST, "mesh_updates": True})
    kinds: list[str] = []
    meshes: list[dict] = []
    topology: dict | None = None
    while True:
        event = engine.next(skip_progress=False)
        kinds.append(event["type"])
        if event["type"] == "topology":
            topology = event
        elif event["type"] == "mesh":
            meshes.append(event)
        elif event["type"] != "progress":
            break
    assert event["type"] == "done", event
    assert kinds.count("topology") == 1 and kinds.index("topology") < kinds.index("mesh")
    landmark_steps = [m["step"] for m in meshes if m["stage"] == "landmarks"]
    assert landmark_steps == [25, 50, 60]  # every MESH_EVERY steps, and the stage's last
    result = read_result(out, load_images=False)
    assert topology is not None and topology["id"] == "m1"
    faces = np.frombuffer(base64.b64decode(topology["faces"]), dtype="<i4").reshape(-1, 3)
    np.testing.assert_array_equal(faces, result.faces)
    last = np.frombuffer(base64.b64decode(meshes[-1]["vertices"]), dtype="<f4").reshape(-1, 3)
    assert meshes[-1]["vertex_count"] == len(result.vertices) == topology["vertex_count"]
    assert np.linalg.norm(last - result.vertices, axis=1).mean() < 2e-3  # metres
    first = np.frombuffer(base64.b64decode(meshes[0]["vertices"]), dtype="<f4").reshape(-1, 3)
    assert np.abs(first - last).max() > 1e-4  # the head changed shape while fitting


def test_cancel_stops_within_a_second_and_writes_nothing(engine: Engine, grace_path: Path, tmp_path: Path):
    out = tmp_path / "cancelled"
    engine.send({"type": "reconstruct", "id": "r2", "photos": [str(grace_path)], "output": str(out),
                 "options": {"steps": 100000}})
    while engine.next(skip_progress=False)["type"] != "progress":
        pass
    engine.send({"type": "status", "id": "s"})
    status = engine.next()
    assert status["busy"] is True and status["job"]["id"] == "r2"
    sent = time.monotonic()
    engine.send({"type": "cancel", "id": "r2"})
    event = engine.next()
    assert event == {"type": "cancelled", "id": "r2"}
    assert time.monotonic() - sent < 1.0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir()]


def test_several_photos_of_one_person_make_one_head(engine: Engine, grace_path: Path, tmp_path: Path):
    """Paper 3.5 from the protocol (issue 18, item 5): a request used to take one photo only."""
    from PIL import Image

    mirrored = tmp_path / "grace_mirrored.png"
    Image.open(grace_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    out = tmp_path / "both"
    engine.send({"type": "reconstruct", "id": "two", "photos": [str(grace_path), str(mirrored)],
                 "output": str(out), "options": FAST})
    done = engine.next()
    assert done["type"] == "done", done
    result = json.loads((out / "result.json").read_text())
    assert len(result["photos"]) == 2 and len(result["views"]) == 2


def test_cancel_by_an_integer_id(engine: Engine, grace_path: Path, tmp_path: Path):
    """A job sent with id 7 is cancelled by id 7 (and its events carry 7): events used to carry
    "7", a cancel of 7 answered 'nothing to cancel', and the job ran on (issue 16)."""
    out = tmp_path / "int-id"
    engine.send({"type": "reconstruct", "id": 7, "photos": [str(grace_path)], "output": str(out),
                 "options": {"steps": 100000}})
    event = engine.next(skip_progress=False)
    assert event["type"] == "progress" and event["id"] == 7
    engine.send({"type": "cancel", "id": 7})
    assert engine.next() == {"type": "cancelled", "id": 7}
    assert not out.exists()


@pytest.mark.parametrize(
    "request_,needle",
    [
        ({"type": "reconstruct", "id": "e1", "photos": ["/nonexistent/photo.jpg"], "output": "OUT"}, "not found"),
        ({"type": "reconstruct", "id": "e2", "photos": ["COFFEE"], "output": "OUT"}, "no face"),
        ({"type": "reconstruct", "id": "e3", "photos": ["GRACE"], "output": "OUT", "options": {"colour": 1}}, "unknown option"),
        ({"type": "reconstruct", "id": "e4", "photos": [], "output": "OUT"}, "photos"),
        ({"type": "reconstruct", "id": "e7", "photos": ["GRACE"], "output": "OUT", "options": {"clean_texture": "yes"}}, "true or false"),
        ({"type": "frobnicate", "id": "e5"}, "unknown request type"),
        ({"type": "reconstruct", "id": "e6", "photos": ["GRACE"], "output": "OUT", "mode": "fast",
          "options": {"lighting_steps": 3}}, "option lighting_steps: not used by mode fast"),
        # Issue 16, class 6: each of these said "internal error" or was silently accepted.
        ({"type": "reconstruct", "id": "e8", "photos": ["GRACE"], "output": "OUT", "options": [1]}, "options must be"),
        ({"type": "reconstruct", "id": "e9", "photos": ["GRACE"], "output": "OUT", "options": "fast please"}, "options must be"),
        ({"type": "reconstruct", "id": "e10", "photos": ["GRACE"], "output": "OUT", "options": {"lr": "abc"}}, "option lr"),
        ({"type": "reconstruct", "id": "e11", "photos": ["GRACE"], "output": "OUT", "options": {"lr": None}}, "option lr"),
        ({"type": "reconstruct", "id": "e12", "photos": ["GRACE"], "output": "OUT", "options": {"seed": 2**70}}, "option seed"),
        ({"type": "reconstruct", "id": "e13", "photos": ["GR\u0000ACE"], "output": "OUT"}, "path"),
        ({"type": "reconstruct", "id": "e14", "photos": ["GRACE"], "output": "OUT", "options": {"steps": -5}}, "option steps"),
        ({"type": "reconstruct", "id": "e15", "photos": ["GRACE"], "output": "OUT", "options": {"steps": True}}, "option steps"),
        ({"type": "reconstruct", "id": "e16", "photos": ["GRACE"], "output": "OUT", "options": {"lr": -1}}, "option lr"),
        ({"type": "reconstruct", "id": "e17", "photos": ["GRACE"], "output": "OUT", "force": "false"}, "'force'"),
    ],
)
def test_errors_are_events_and_the_engine_keeps_serving(engine: Engine, request_, needle, grace_path, coffee_path, tmp_path):
    request_ = json.loads(json.dumps(request_).replace("COFFEE", str(coffee_path)).replace("GRACE", str(grace_path)).replace('"OUT"', json.dumps(str(tmp_path / "out"))))
    engine.send(request_)
    event = engine.next()
    assert event["type"] == "error" and event["id"] == request_["id"]
    assert needle in event["message"] and "\n" not in event["message"]
    assert not (tmp_path / "out").exists()
    engine.send({"type": "status", "id": "after"})
    assert engine.next()["busy"] is False


def test_clean_texture_option_sets_the_appearance_setting():
    from ganfit.serve import _settings_from_options

    assert _settings_from_options({"clean_texture": True}).appearance.skin_only_outside_face is True
    assert _settings_from_options({}).appearance.skin_only_outside_face is False


def test_malformed_line_and_shutdown():
    e = Engine()
    assert e.next()["type"] == "ready"
    e.proc.stdin.write("this is not json\n")
    e.proc.stdin.flush()
    event = e.next()
    assert event["type"] == "error" and "JSON" in event["message"]
    e.send({"type": "shutdown"})
    assert e.next()["type"] == "bye"
    assert e.proc.wait(timeout=30) == 0
