"""Shared by the benchmark scripts: print a table and keep it in benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def publish(name: str, lines: list[str]) -> None:
    """Print the lines and write them to benchmarks/results/<name>.txt."""
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text + "\n")
