"""Time of a landmark-stage fit of one photo in a fresh process, model loading included
(issue: under 10 s on this CPU). Prints the breakdown and writes benchmarks/results/landmark-fit.txt.

    python benchmarks/bench_landmark_fit.py [PHOTO]
"""

from __future__ import annotations

import time

START = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from report import publish  # noqa: E402

import torch  # noqa: E402

from ganfit.face.detection import default_detector, find_face  # noqa: E402
from ganfit.fit.landmark_stage import fit_landmarks  # noqa: E402
from ganfit.fit.settings import LandmarkStageSettings  # noqa: E402
from ganfit.io.images import load_photo  # noqa: E402
from ganfit.io.samples import sample_photo  # noqa: E402
from ganfit.models.shape_model import load_default_shape_model  # noqa: E402


def _seconds_since_process_start() -> float | None:
    """Wall time since this process was created (Linux /proc), interpreter start-up included."""
    try:
        import os

        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        start = float(fields[19]) / ticks  # field 22 of stat: start time after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else sample_photo("grace_hopper")
    marks = [("python + torch + ganfit imports", time.perf_counter())]
    model = load_default_shape_model()
    marks.append(("shape model load", time.perf_counter()))
    detector = default_detector()
    detector.predictor  # loads the 68-point model now, so its time shows on its own line
    marks.append(("dlib models load", time.perf_counter()))
    photo = load_photo(path)
    marks.append(("photo load", time.perf_counter()))
    face = find_face(photo, None, detector)
    marks.append(("face detection + 68 landmarks", time.perf_counter()))
    settings = LandmarkStageSettings()
    w, h = photo.size
    fit = fit_landmarks(
        model,
        torch.as_tensor(face.landmarks)[None],
        torch.tensor([[w, h]], dtype=torch.float32),
        torch.tensor([settings.default_focal]),
        settings,
    )
    marks.append((f"landmark fit ({settings.steps} Adam steps)", time.perf_counter()))
    lines = [f"landmark-stage fit of {path.name}, fresh process, {torch.get_num_threads()} threads"]
    prev = START
    for name, t in marks:
        lines.append(f"  {name:<36} {t - prev:6.2f} s")
        prev = t
    lines.append(f"  {'total (first import to fit)':<36} {prev - START:6.2f} s")
    since_exec = _seconds_since_process_start()
    if since_exec is not None:
        lines.append(f"  {'total incl. interpreter start':<36} {since_exec:6.2f} s   (target < 10 s)")
    lines.append(f"  landmark error {float(fit.error_iod[0]):.2%} of the outer-eye-corner distance")
    publish("landmark-fit", lines)


if __name__ == "__main__":
    main()
