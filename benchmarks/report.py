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
