"""Speed of the identity network (dlib's ResNet in PyTorch) as the identity loss uses it:
forward and backward to the input image at batch 2, on CPU, default torch threads.
Prints a table and writes benchmarks/results/identity-network.txt.

    python benchmarks/bench_identity_network.py [--runs 50] [--processes 5]

``--processes N`` repeats the headline measurement in N fresh processes and prints each median:
on a shared VM the same code measures several milliseconds apart from one process to the next
(memory placement, the host's other tenants), which one process's median cannot show.

Figures are medians over ``--runs`` timed runs after warm-up, the variants interleaved. Other
work on the machine inflates them (with 2 cores, any other busy process stalls torch's OpenMP
threads); the load average before and after is printed so a reader can judge.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import ganfit  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from report import publish  # noqa: E402

from ganfit.face.recognition import (  # noqa: E402
    CHIP_SIZE,
    FaceRecognitionNetwork,
    load_face_recognition_network,
    read_dlib_resnet_weights,
)

BATCH = 2


def _medians_ms(steps: list[Callable[[], object]], runs: int, warmup: int = 10, chunk: int = 5) -> list[float]:
    """Median time of each step, the steps interleaved in chunks so that load changing on a
    shared machine affects all of them alike."""
    for step in steps:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steps]
    while len(times[0]) < runs:
        for step, spent in zip(steps, times):
            for _ in range(chunk):
                start = time.perf_counter()
                step()
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1e3 for spent in times]


def _fwd_bwd(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, target: torch.Tensor) -> Callable[[], object]:
    """One identity-loss step: 1 - cosine(descriptor, target), gradient to the images."""

    def step() -> torch.Tensor:
        x = images.detach().requires_grad_(True)
        loss = (1.0 - F.cosine_similarity(run(x), target, dim=1)).sum()
        (grad,) = torch.autograd.grad(loss, x)
        return grad

    return step


def _forward(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> Callable[[], object]:
    def step() -> torch.Tensor:
        with torch.no_grad():
            return run(images)

    return step


def _forward_gflop(net: FaceRecognitionNetwork, images: torch.Tensor) -> float:
    """Multiply-adds x 2 of the convolutions and the fc layer in one forward pass."""
    flops = 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops += 2 * output.numel() * module.in_channels * k
        elif isinstance(module, torch.nn.Linear):
            flops += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net.forward_reference(images)
    for handle in handles:
        handle.remove()
    return flops / 1e9


def _sgemm_gflops() -> float:
    """This machine's float32 matrix-product rate (1024^3, default threads): the yardstick."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * 1024**3 / best / 1e9


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per figure (>= 30)")
    parser.add_argument("--processes", type=int, default=1, help="repeat the headline in N fresh processes")
    parser.add_argument("--headline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    runs = max(30, args.runs)
    if args.headline_only:
        net = load_face_recognition_network()
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(BATCH, 3, CHIP_SIZE, CHIP_SIZE, generator=generator)
        (ms,) = _medians_ms([_fwd_bwd(net, images, torch.randn(BATCH, 128, generator=generator))], runs)
        print(f"{ms:.2f}")
        return
    repeats: list[float] = []
    for _ in range(max(0, args.processes - 1)):
        out = subprocess.run([sys.executable, __file__, "--headline-only", "--runs", str(runs)],
                             check=True, capture_output=True, text=True).stdout
        repeats.append(float(out.split()[-1]))
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    weights = read_dlib_resnet_weights()
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    net = load_face_recognition_network()
    load_s = time.perf_counter() - start
    fast = net.uses_cpu_fast_path
    reference = FaceRecognitionNetwork(weights).to(memory_format=torch.channels_last)

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, CHIP_SIZE, CHIP_SIZE, generator=generator)
    target = torch.randn(BATCH, 128, generator=generator)

    rows = [
        ("fwd+bwd, fast path" if fast else "fwd+bwd (fast path unavailable)", _fwd_bwd(net, images, target)),
        ("fwd+bwd, plain layers", _fwd_bwd(reference.forward_reference, images, target)),
        ("forward only, fast path" if fast else "forward only", _forward(net, images)),
        ("forward only, plain layers", _forward(reference.forward_reference, images)),
    ]
    (headline,) = _medians_ms([rows[0][1]], runs)  # alone: warm caches, as in a fitting loop
    medians = _medians_ms([step for _, step in rows], runs)
    results = [(name, ms) for (name, _), ms in zip(rows, medians)]
    load_after = os.getloadavg()[0]
    gflop = _forward_gflop(reference, images)
    sgemm = _sgemm_gflops()

    lines = [
        f"Identity network (dlib ResNet, 150x150 -> 128), batch {BATCH}, float32, CPU",
        f"CPU: {_cpu_name()} ({torch.backends.cpu.get_cpu_capability()} kernels), {os.cpu_count()} logical cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"1-min load average {load_before:.2f} before, {load_after:.2f} after",
        "",
        f"forward+backward (input gradient), {'fast path' if fast else 'plain layers'}, "
        f"median of {runs} consecutive runs after 10 warm-up: {headline:.1f} ms",
    ]
    if repeats:
        every = sorted([headline] + repeats)
        lines.append(f"the same in {len(every)} fresh processes: " + ", ".join(f"{ms:.1f}" for ms in every)
                     + f" ms; median {statistics.median(every):.1f} ms, {sum(ms <= 30.0 for ms in every)} of "
                     f"{len(every)} at or under the 30 ms target")
    lines += [
        "",
        f"comparison, the rows interleaved in chunks of 5 (so each starts with colder caches), "
        f"median of {runs}+ runs each:",
        f"{'what':<34}{'ms':>8}",
        f"{'-' * 34}{'-' * 8}",
    ]
    lines += [f"{name:<34}{ms:>8.1f}" for name, ms in results]
    lines += [
        "",
        f"parse .dat: {parse_s * 1e3:.0f} ms; load_face_recognition_network "
        f"(parse + build + pack + verify): {load_s * 1e3:.0f} ms",
        f"work: {gflop:.2f} GFLOP per forward at batch {BATCH} (the input gradient costs about as much "
        f"again); this machine's 1024^3 float32 matmul: {sgemm:.0f} GFLOP/s, so "
        f"{2 * gflop / sgemm * 1e3:.1f} ms is the forward+backward arithmetic at matmul speed",
    ]
    publish("identity-network", lines)


if __name__ == "__main__":
    main()
