"""Shared by the benchmark scripts: print a table and keep it in benchmarks/results/; hash the
files a cached figure depends on."""

from __future__ import annotations

import hashlib
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def publish(name: str, lines: list[str]) -> None:
    """Print the lines and write them to benchmarks/results/<name>.txt."""
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text + "\n")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (weights, renders): cached figures are keyed by what they came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_block(path: Path, name: str, block: list[str]) -> None:
    """Write ``block`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``path`` (the prose
    around it stays); a file without the markers gets the block appended, a new file holds it."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + \
            start + "\n" + "\n".join(block) + "\n" + end + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
