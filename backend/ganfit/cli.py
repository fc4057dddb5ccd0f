"""Command line: ``ganfit reconstruct PHOTO... -o OUT`` and ``ganfit info``.

User errors (``GanfitError``) print one line and exit non-zero without a traceback; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import GanfitError

log = logging.getLogger("ganfit")

EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganfit", description="3D face reconstruction from photos (Fast-GANFit).")
    parser.add_argument("--version", action="version", version=f"ganfit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="fit a textured 3D head to each photo")
    rec.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="JPEG/PNG photo(s) with a face")
    rec.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                     help="result folder (one photo) or parent folder of one result per photo")
    rec.add_argument("--force", action="store_true", help="replace an existing result folder")
    rec.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    rec.add_argument("--steps", type=int, default=None, help="landmark-stage steps (default 300)")
    rec.add_argument("--lighting-steps", type=int, default=None, help="lighting-stage steps (default 80)")
    rec.add_argument("--lr", type=float, default=None, help="landmark-stage Adam learning rate (default 0.02)")
    rec.add_argument("--texture-size", type=int, default=None, help="UV texture size in pixels (default 1024)")
    rec.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rec.add_argument("--face", type=int, default=None, metavar="N",
                     help="which face when a photo has several: 0 = largest (default), 1 = next, ...")
    rec.add_argument("--no-exports", action="store_true", help="skip head.obj/head.glb in the result folder")
    rec.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rec.add_argument("-v", "--verbose", action="store_true", help="log each stage")

    sub.add_parser("serve", help="JSON-lines protocol on stdin/stdout for the Blender add-on (docs/protocol.md)")

    info = sub.add_parser("info", help="versions, devices and where each model comes from")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _check_positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise GanfitError(f"{name} {value}: must be a positive number")


def _settings(args: argparse.Namespace):
    from .fit.settings import FitSettings

    for name in ("--steps", "--lighting-steps", "--lr", "--texture-size"):
        _check_positive(name, getattr(args, name.lstrip("-").replace("-", "_")))
    if args.face is not None and args.face < 0:
        raise GanfitError(f"--face {args.face}: faces are numbered from 0 (the largest)")
    base = FitSettings()
    landmark = base.landmark
    if args.steps is not None:
        landmark = replace(landmark, steps=args.steps)
    if args.lr is not None:
        landmark = replace(landmark, learning_rate=args.lr)
    appearance = base.appearance
    if args.lighting_steps is not None:
        appearance = replace(appearance, steps=args.lighting_steps)
    if args.texture_size is not None:
        if args.texture_size < 16 or args.texture_size > 4096:
            raise GanfitError(f"--texture-size {args.texture_size}: choose between 16 and 4096")
        appearance = replace(appearance, texture_size=args.texture_size)
    return FitSettings(landmark=landmark, appearance=appearance, seed=args.seed, device=args.device, face_index=args.face)


def _outputs(photos: list[Path], output: Path) -> list[Path]:
    """One photo writes OUT itself; several write OUT/<photo name>/ each."""
    if len(photos) == 1:
        return [output]
    names = [p.stem for p in photos]
    outs = []
    for photo, name in zip(photos, names):
        unique = name if names.count(name) == 1 else f"{name}-{photo.suffix.lstrip('.')}"
        outs.append(output / unique)
    if len(set(outs)) != len(outs):
        raise GanfitError("several photos share a file name; reconstruct them one at a time with -o for each")
    return outs


class _ProgressBar:
    """A tqdm bar per photo that follows the stages of the fit."""

    def __init__(self, name: str, enabled: bool):
        from tqdm import tqdm

        self._bar = tqdm(total=100, desc=name, unit="%", disable=not enabled, leave=True,
                         bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        self._stage = ""
        self._weights = {"detect": (0, 5), "landmarks": (5, 35), "lighting": (35, 85), "texture": (85, 95), "write": (95, 100)}

    def __call__(self, event) -> None:
        start, end = self._weights.get(event.stage, (0, 100))
        value = start + (end - start) * event.step / max(event.total, 1)
        # Redraw on each whole percent or new stage: a log file gets ~100 lines, not thousands.
        if int(value) == int(self._bar.n) and event.stage == self._stage:
            return
        self._stage = event.stage
        self._bar.n = round(value, 1)
        post = {"stage": event.stage}
        post.update({k: f"{v:.4f}" for k, v in list(event.losses.items())[:2]})
        self._bar.set_postfix(post, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _reconstruct(args: argparse.Namespace) -> int:
    from .io.result import check_output_folder, write_result

    settings = _settings(args)
    for photo in args.photos:
        if not photo.exists():
            raise GanfitError(f"{photo}: file not found; check the path")
    outputs = _outputs(args.photos, args.output)
    for out in outputs:
        check_output_folder(out, force=args.force)

    from .fit.progress import ProgressEvent
    from .fit.reconstruct import Reconstructor

    reconstructor = Reconstructor(settings)
    failures: list[str] = []
    for photo, out in zip(args.photos, outputs):
        bar = _ProgressBar(photo.name, enabled=not args.quiet)
        try:
            result = reconstructor.reconstruct(photo, progress=bar)
            bar(ProgressEvent("write", 1, 2))
            folder = write_result(result, out, force=args.force, exports=not args.no_exports)
            bar(ProgressEvent("write", 2, 2))
        except GanfitError as exc:
            bar.close()
            if len(args.photos) == 1:
                raise
            print(f"ganfit: error: {exc}", file=sys.stderr)
            failures.append(str(photo))
            continue
        bar.close()
        print(f"{photo}: wrote {folder} (landmark error {result.landmark_error_iod:.2%} of the eye-corner distance)")
    if failures:
        print(f"ganfit: {len(failures)} of {len(args.photos)} photos failed: {', '.join(failures)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def info_dict() -> dict[str, Any]:
    """Versions, devices and model provenance, as `ganfit info` prints them."""
    import numpy
    import torch

    from .face.detection import FaceDetector
    from .fit.reconstruct import TEXTURE_MODEL
    from .models.shape_model import DEFAULT_MODEL_FILE, load_default_shape_model

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    try:
        import dlib

        dlib_version = dlib.__version__
    except ImportError:
        dlib_version = "not installed"
    models: dict[str, Any] = {}
    try:
        model = load_default_shape_model()
        models["shape"] = {
            "name": model.name,
            "path": str(DEFAULT_MODEL_FILE),
            "vertices": int(model.mean.shape[0]),
            "identity": model.num_identity,
            "expression": model.num_expression,
        }
    except GanfitError as exc:
        models["shape"] = {"error": str(exc)}
    try:
        models["landmarks"] = {"name": "dlib 68-point shape predictor (iBUG 300-W; non-commercial)",
                               "path": str(FaceDetector().landmark_model_path)}
    except GanfitError as exc:
        models["landmarks"] = {"error": str(exc)}
    models["texture"] = {"name": TEXTURE_MODEL, "path": "(computed from each photo)"}
    return {
        "ganfit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "dlib": dlib_version,
        "devices": devices,
        "models": models,
    }


def _info(args: argparse.Namespace) -> int:
    data = info_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"ganfit {data['ganfit']}  (python {data['python']}, torch {data['torch']}, numpy {data['numpy']}, dlib {data['dlib']})")
    print(f"devices: {', '.join(data['devices'])}")
    print("models:")
    for role, entry in data["models"].items():
        if "error" in entry:
            print(f"  {role:10s} MISSING: {entry['error']}")
        else:
            extra = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("name", "path"))
            print(f"  {role:10s} {entry['name']}" + (f" ({extra})" if extra else ""))
            print(f"  {'':10s} from {entry['path']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    # Logs always go to stderr: in `serve`, stdout carries only protocol events.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "reconstruct":
            return _reconstruct(args)
        if args.command == "serve":
            from .serve import serve

            return serve()
        return _info(args)
    except GanfitError as exc:
        print(f"ganfit: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("ganfit: interrupted; no partial result was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
