"""``ganfit serve`` answers any line with an event and keeps serving (issue 16, class 3).

A real engine process gets 1,200 generated malformed lines: random bytes, invalid UTF-8, deep
nesting, non-finite numbers, wrong types in every field, over-long lines. Each must be
answered by one ``error`` event, and afterwards the same process must still run a real
reconstruction to its ``done``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from test_serve import FAST

LINES = 1200


def _random_bytes(rng: random.Random) -> bytes:
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    data = data.replace(b"\n", b"?").replace(b"\r", b"?")
    return data if data.strip() else b"?" + data


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([1_000, 5_000, 100_000, 200_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"type": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


_BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" * 5000]


def _non_finite(rng: random.Random) -> bytes:
    number = rng.choice(_BAD_NUMBERS)
    field = rng.choice(['"id": {}', '"options": {{"lr": {}}}', '"options": {{"seed": {}}}', '"force": {}',
                        '"type": {}', '"photos": [{}]'])
    kind = rng.choice(["reconstruct", "status", "cancel"])
    return ('{"type": "%s", ' % kind + field.format(number) + "}").encode()


_WRONG = [None, True, False, -1, 0, 2**70, -5, 3.5, "", "abc", "\u0000", [], [1, 2], {}, {"a": [None]}, "x" * 300]


def _wrong_types(rng: random.Random, photo: str, out: str) -> bytes:
    """A request with at least one field of the wrong type or out of range."""
    valid = {"type": "reconstruct", "id": f"f{rng.randrange(10**6)}", "photos": [photo], "output": out,
             "options": dict(FAST)}
    broken = rng.choice(["type", "id", "photos", "output", "force", "mesh_updates", "mode", "options", "option",
                         "photo_entry", "loss_weights"])
    if broken == "type":
        valid["type"] = rng.choice([None, True, -1, 3.5, "", "frobnicate", "RECONSTRUCT", [], {}])
    elif broken == "id":
        valid["id"] = rng.choice([None, True, 3.5, [], {}, "", "x" * 300])
    elif broken == "photos":
        valid["photos"] = rng.choice([photo, [], [photo, photo], {"p": photo}, 5, None])
    elif broken == "photo_entry":
        valid["photos"] = [rng.choice([None, 5, "", "a\u0000b", [photo]])]
    elif broken == "output":
        valid["output"] = rng.choice([None, 5, "", "a\u0000b", [out]])
    elif broken in ("force", "mesh_updates"):
        valid[broken] = rng.choice(["false", "true", 0, 1, None, [], {}])
    elif broken == "mode":
        valid["mode"] = rng.choice(["FAST", "ganfit+", "turbo", 1, None, []])
    elif broken == "options":
        valid["options"] = rng.choice(["fast please", [1, 2], 5, True])
    elif broken == "loss_weights":
        valid["options"] = {**FAST, "loss_weights": rng.choice([{"pixel": -1}, {"colour": 1}, [1], {"pixel": "1"},
                                                                 {"identity": 1e300}])}
    else:
        key = rng.choice(["steps", "lr", "fit_lr", "seed", "face", "texture_size", "fit_steps", "lighting_steps",
                          "clean_texture", "device", "unknown_option"])
        value = rng.choice([v for v in _WRONG if not (isinstance(v, int) and not isinstance(v, bool) and 0 < v < 16)])
        if key in ("lr", "fit_lr") and value is False:
            value = -1
        if key == "device":
            value = rng.choice(["gpu", 5, None, "cuda:x", ""])
        if key in ("fit_steps",) and value == 0:
            value = -1
        if key in ("seed", "face") and value == 0:
            value = -1
        if key == "clean_texture" and isinstance(value, bool):
            value = "yes"
        valid["options"] = {**FAST, key: value}
    return json.dumps(valid).encode()


def _not_objects(rng: random.Random) -> bytes:
    return rng.choice([b"1", b'"reconstruct"', b"[1, 2, 3]", b"null", b"true", b"{", b'{"type": "status"', b"}",
                       b"{'type': 'status'}", b"\xef\xbb\xbf{}"])


def _invalid_utf8(rng: random.Random) -> bytes:
    return b'{"type": "status", "id": "' + bytes([rng.choice([0x80, 0xC0, 0xFF, 0xFE, 0xED])]) + b'\xa0"}'


def _huge(rng: random.Random) -> bytes:
    size = rng.choice([(1 << 20) + 10, 2_500_000])
    return b'{"type": "status", "id": "' + b"x" * size + b'"}'


def malformed_lines(seed: int, photo: str, out: str) -> Iterator[bytes]:
    """LINES lines, each of which must be answered by exactly one error event."""
    rng = random.Random(seed)
    makers = [(_random_bytes, 25), (_deep, 4), (_non_finite, 15), (_not_objects, 10), (_invalid_utf8, 6)]
    population = [m for m, weight in makers for _ in range(weight)]
    huge_at = set(rng.sample(range(LINES), 6))
    for index in range(LINES):
        if index in huge_at:
            yield _huge(rng)
        elif rng.random() < 0.4:
            yield _wrong_types(rng, photo, out)
        else:
            yield rng.choice(population)(rng)


def test_fuzzed_lines_each_get_an_error_and_the_engine_still_reconstructs(grace_path: Path, tmp_path: Path):
    out = str(tmp_path / "out")
    lines = list(malformed_lines(16, str(grace_path), out))
    # A strict locale must not matter: the engine reads bytes and decodes them itself.
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    proc = subprocess.Popen([sys.executable, "-m", "ganfit", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    events: queue.Queue = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            events.put(json.loads(raw))
        events.put(None)

    def drain_stderr() -> None:
        assert proc.stderr is not None
        tracebacks.extend(line for line in proc.stderr if b"Traceback" in line)

    tracebacks: list[bytes] = []
    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=drain_stderr, daemon=True).start()

    def write() -> None:  # on its own thread: the engine answers while we still write
        assert proc.stdin is not None
        for line in lines:
            proc.stdin.write(line + b"\n")
        proc.stdin.flush()

    try:
        assert events.get(timeout=60)["type"] == "ready"
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        answered = []
        for _ in lines:
            event = events.get(timeout=120)
            assert event is not None, f"engine exited after {len(answered)} lines"
            answered.append(event)
        writer.join(timeout=60)
        kinds = {event["type"] for event in answered}
        assert kinds == {"error"}, kinds
        assert all(isinstance(e["message"], str) and e["message"] and "\n" not in e["message"] for e in answered)
        assert not any("internal error" in e["message"] for e in answered), \
            [e["message"] for e in answered if "internal error" in e["message"]][:3]
        assert not Path(out).exists()

        request = {"type": "reconstruct", "id": 1, "photos": [str(grace_path)], "output": out, "options": FAST}
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        while (event := events.get(timeout=300))["type"] == "progress":
            assert event["id"] == 1
        assert event["type"] == "done" and event["id"] == 1, event
        assert (Path(out) / "result.json").is_file()
    finally:
        if proc.poll() is None:
            proc.stdin.write(b'{"type": "shutdown"}\n')
            proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    assert not tracebacks
