"""Command line: ``ganfit reconstruct PHOTO... -o OUT``, ``ganfit info``, ``ganfit serve`` and the
texture prior's tools (``texture-dataset``, ``texture-pca``, ``train-texture``).

User errors (``GanfitError``) print one line and exit non-zero without a traceback; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import __version__
from .errors import GanfitError
from .protocol import DEFAULT_MODE, MODE_HELP, progress_fraction  # stdlib only, shared with the add-on
from .settings import LOSS_TERMS

log = logging.getLogger("ganfit")

EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130


#: The training tools (texture prior, issue 5; regressor, issue 19): their module and one-line help.
#: Their modules import torch, so only the one whose command is given is imported: a usage
#: error or ``--help`` answers in a fraction of a second instead of after loading torch.
TOOLS = {
    "texture-dataset": (".texture.dataset", "build a UV texture set (albedo + confidence maps) from a folder of face photos"),
    "texture-pca": (".texture.pca", "fit the PCA texture model (paper eq. 1) on a UV texture folder"),
    "train-texture": (".texture.train", "train the UV texture GAN (docs/texture-model.md)"),
    "train-texture-detail": (".texture.detail_train", "train the detail stage of a PCA-latent texture GAN"),
    "train-regressor": (".train.regressor", "train the Fast-GANFit regression network (docs/regressor.md)"),
}


def _build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI; of the training tools, only the one ``argv`` names is loaded in full."""
    parser = argparse.ArgumentParser(prog="ganfit", description="3D face reconstruction from photos (Fast-GANFit).")
    parser.add_argument("--version", action="version", version=f"ganfit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="fit a textured 3D head to a photo, or to several photos of one person")
    rec.add_argument("photos", nargs="+", type=Path, metavar="PHOTO",
                     help="JPEG/PNG photo(s) with a face; several photos are taken as one person (one head)")
    rec.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                     help="result folder (with --each: parent folder of one result per photo)")
    rec.add_argument("--each", action="store_true",
                     help="fit every photo on its own into OUT/<photo name>/ instead of one person from all")
    rec.add_argument("--force", action="store_true", help="replace an existing result folder")
    rec.add_argument("--mode", default=None, metavar="MODE",
                     help="; ".join(f"{mode}: {text.split(': ', 1)[1]}" for mode, text in MODE_HELP.items())
                          + f" (default {DEFAULT_MODE}, or ganfit when --steps, --lr, --lighting-steps, --shape-model "
                          "or --identity-model is given; docs/regressor.md). The regression network is trained on "
                          "UTKFace: non-commercial research only")
    rec.add_argument("--regressor", default=None, metavar="NPZ",
                     help="regression network weights for --mode fast/ganfit++ (default: the shipped ones)")
    # Values are kept as typed and checked by ganfit.settings, the rules the protocol uses too.
    rec.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    rec.add_argument("--steps", default=None, help="landmark-stage steps (default 300)")
    rec.add_argument("--fit-steps", default=None,
                     help="full-objective steps (default 60; 0 = landmark-only fit)")
    rec.add_argument("--fit-lr", default=None, help="full-objective Adam learning rate (default 0.01)")
    rec.add_argument("--loss-weight", action="append", default=[], metavar="TERM=W",
                     help="weight of one term of the objective, 0 to 1e6, 0 switches it off; terms: "
                          + ", ".join(LOSS_TERMS))
    rec.add_argument("--lighting-steps", default=None, help="lighting-stage steps (default 80)")
    rec.add_argument("--lr", default=None, help="landmark-stage Adam learning rate (default 0.02)")
    rec.add_argument("--texture-size", default=None, help="UV texture size in pixels (default 512; the face fills 58%% of it)")
    rec.add_argument("--clean-texture", action="store_true", default=None,
                     help="outside the face outline keep the photo only where it looks like skin: no background, "
                          "hats or hair on ears, temples and scalp (dlib finds the render a little less like the photo)")
    rec.add_argument("--texture-source", default=None, metavar="photo|blend",
                     help="where the albedo comes from: 'photo' (default: the photo projected onto the head, seen "
                          "hair and hats included) or 'blend' (the photo where it shows skin seen squarely, the "
                          "texture model fitted to that skin elsewhere, blended with no seam: no hair, hat or "
                          "background on the head, a little less like the person; docs/fitting.md)")
    rec.add_argument("--seed", default=None, help="random seed, 0 to 4294967295 (default 0)")
    rec.add_argument("--face", default=None, metavar="N",
                     help="which face when a photo has several: 0 = largest (default), 1 = next, ...")
    rec.add_argument("--shape-model", type=Path, default=None, metavar="FILE",
                     help="another 3DMM: BFM 2017 (.h5) or FLAME (.pkl/.npz); see docs/shape-models.md")
    rec.add_argument("--landmarks", type=Path, default=None, metavar="JSON",
                     help="68 landmark vertex indices for --shape-model (docs/shape-models.md)")
    rec.add_argument("--texture-model", default=None, metavar="gan|projected|NPZ",
                     help="texture model: 'gan' (the GAN that ships with ganfit), 'projected' (no model: the "
                          "photo projected into UV) or a GAN/PCA .npz file (docs/texture-model.md); with a model "
                          "the texture is its fitted latent code")
    rec.add_argument("--texture-refine-steps", default=None, metavar="N",
                     help="with --texture-model: refine the UV map itself for N steps after the fit "
                          "(the paper's optional last step; off by default, reported separately)")
    rec.add_argument("--identity-model", type=Path, default=None, metavar="ONNX",
                     help="insightface ArcFace .onnx as the identity network instead of dlib's (docs/backends.md)")
    rec.add_argument("--landmark-model", type=Path, default=None, metavar="FILE",
                     help="face-alignment FAN TorchScript file for landmarks instead of dlib's (docs/backends.md)")
    rec.add_argument("--no-exports", action="store_true", help="skip head.obj/head.glb in the result folder")
    rec.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rec.add_argument("-v", "--verbose", action="store_true", help="log each stage")

    sub.add_parser("serve", help="JSON-lines protocol on stdin/stdout for the Blender add-on (docs/protocol.md)")

    words = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in words if not word.startswith("-")), None)
    for name, (module, help_text) in TOOLS.items():
        if name == command:
            importlib.import_module(module, __package__).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)

    info = sub.add_parser("info", help="versions, devices and where each model comes from")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _settings(args: argparse.Namespace):
    """FitSettings from the flags, by the rules the protocol's options follow (ganfit.settings)."""
    from .settings import OPTIONS, build_settings, parse_loss_weights

    given: dict[str, Any] = {key: getattr(args, key) for key in OPTIONS}
    mode = args.mode
    others = [flag for flag, value in (("--shape-model", args.shape_model), ("--identity-model", args.identity_model))
              if value is not None]
    if others and mode is not None and mode != "ganfit":
        raise GanfitError(f"{others[0]}: the regression network of --mode {mode} was trained for the default head "
                          "and reads dlib's identity features; use --mode ganfit with it")
    if others and mode is None:
        mode = "ganfit"  # the default mode's network knows only the default head and identity network
    given.update(device=args.device, clean_texture=args.clean_texture, texture_model=args.texture_model,
                 texture_source=args.texture_source,
                 mode=mode, regressor=args.regressor)
    if args.loss_weight:
        given["loss_weights"] = parse_loss_weights(args.loss_weight)
    return build_settings(given, "cli")


def _shape_model(args: argparse.Namespace):
    """The --shape-model file loaded (None: the default head)."""
    if args.shape_model is None:
        if args.landmarks is not None:
            raise GanfitError("--landmarks: only used with --shape-model; add --shape-model FILE or drop --landmarks")
        return None
    from .models.standard_3dmm import load_shape_model

    for option, path in (("--shape-model", args.shape_model), ("--landmarks", args.landmarks)):
        if path is not None and not path.is_file():
            raise GanfitError(f"{option} {path}: file not found; check the path")
    return load_shape_model(args.shape_model, args.landmarks)


def _backends(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Optional identity network and landmark detector from files (docs/backends.md)."""
    for option, path in (("--identity-model", args.identity_model), ("--landmark-model", args.landmark_model)):
        if path is not None and not path.is_file():
            raise GanfitError(f"{option} {path}: file not found; check the path")
    chosen: dict[str, Any] = {}
    if args.identity_model is not None:
        from .face.arcface import load_arcface
        from .fit.reconstruct import resolve_device

        chosen["identity"] = load_arcface(args.identity_model).to(resolve_device(device))
    if args.landmark_model is not None:
        from .face.detection import FaceDetector
        from .face.fan_landmarks import FanLandmarks
        from .fit.reconstruct import resolve_device

        fan = FanLandmarks(args.landmark_model, device=resolve_device(device))
        chosen["detector"] = FaceDetector(landmarker=fan.landmarks)
    return chosen


def _folder_name(photo: Path) -> str:
    """A photo's name as a folder name inside OUT: never '', '.', '..' or hidden ('...jpg')."""
    name = photo.stem.lstrip(".").strip() or photo.name.lstrip(".").strip()
    return name or "photo"


def _outputs(photos: list[Path], output: Path) -> list[Path]:
    """One photo writes OUT itself; with --each, several write OUT/<photo name>/ each."""
    if len(photos) == 1:
        return [output]
    names = [_folder_name(p) for p in photos]
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

    def __call__(self, event) -> None:
        value = 100.0 * progress_fraction(event.stage, event.step, event.total, default=self._bar.n / 100.0)
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


#: Photos per forward pass of the regression network in ``reconstruct --each --mode fast``.
FAST_BATCH = 16


def _fast_batches(reconstructor: Any, groups: list[list[Path]]) -> Iterator[Any]:
    """Fast mode over many photos: each run of ``FAST_BATCH`` photos is loaded and regressed in
    one batch; yields each photo's result, or its error, in order."""
    from .io.images import load_photo

    for first in range(0, len(groups), FAST_BATCH):
        photos: list[Any] = []
        for (path,) in groups[first:first + FAST_BATCH]:
            try:
                photos.append(load_photo(path, max_side=reconstructor.settings.max_photo_side))
            except GanfitError as exc:
                photos.append(exc)
        loaded = [p for p in photos if not isinstance(p, GanfitError)]
        results = iter(reconstructor.reconstruct_each(loaded))
        for photo in photos:
            yield photo if isinstance(photo, GanfitError) else next(results)


def _reconstruct(args: argparse.Namespace) -> int:
    from .io.result import check_output_folder, write_result

    settings = _settings(args)
    for photo in args.photos:
        if not photo.exists():
            raise GanfitError(f"{photo}: file not found; check the path")
    if len(set(p.resolve() for p in args.photos)) != len(args.photos):
        raise GanfitError("the same photo is given twice; give each photo once")
    # Several photos are one person (paper 3.5) unless --each asks for one fit per photo.
    groups = [[p] for p in args.photos] if args.each else [list(args.photos)]
    outputs = _outputs(args.photos, args.output) if args.each else [args.output]
    for out in outputs:
        check_output_folder(out, force=args.force)

    from .fit.progress import ProgressEvent
    from .fit.reconstruct import Reconstructor

    reconstructor = Reconstructor(settings, shape_model=_shape_model(args), **_backends(args, settings.device))
    reconstructor.texture_model()  # a bad --texture-model file fails now, not after the fit
    if settings.mode != "ganfit":
        reconstructor.regressor()  # so do missing or foreign regressor weights
    failures: list[str] = []
    started = time.perf_counter()
    batched = _fast_batches(reconstructor, groups) if settings.mode == "fast" and len(groups) > 1 else None
    for group, out in zip(groups, outputs):
        photo = group[0] if len(group) == 1 else Path(f"{group[0].name} + {len(group) - 1} more")
        bar = _ProgressBar(photo.name, enabled=not args.quiet)
        try:
            if batched is not None:
                result = next(batched)
                if isinstance(result, GanfitError):
                    raise result
            else:
                result = reconstructor.reconstruct(group, progress=bar)
            bar(ProgressEvent("write", 1, 2))
            folder = write_result(result, out, force=args.force, exports=not args.no_exports)
            bar(ProgressEvent("write", 2, 2))
        except GanfitError as exc:
            bar.close()
            if len(groups) == 1:
                raise
            print(f"ganfit: error: {exc}", file=sys.stderr)
            failures.append(str(photo))
            continue
        bar.close()
        errors = [v["landmark_error_iod"] for v in result.views] or [result.landmark_error_iod]
        error_text = ", ".join(f"{e:.2%}" for e in errors)
        print(f"{photo}: wrote {folder} (landmark error {error_text} of the eye-corner distance)")
    if len(groups) > 1:  # --each over many photos: the throughput
        seconds = time.perf_counter() - started
        done = len(groups) - len(failures)
        print(f"{done} of {len(groups)} photos in {seconds:.1f} s ({done / seconds:.2f} photos/s)")
    if failures:
        print(f"ganfit: {len(failures)} of {len(groups)} photos failed: {', '.join(failures)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def info_dict() -> dict[str, Any]:
    """Versions, devices and model provenance, as `ganfit info` prints them."""
    import numpy
    import torch

    from .face.detection import FaceDetector
    from .fit.reconstruct import TEXTURE_MODEL, apply_threads
    from .models.shape_model import DEFAULT_MODEL_FILE, load_default_shape_model

    # The CPU's kernel level and threads, which reports of speed need: the identity network
    # takes 10 ms with AVX-512 kernels and 14 ms with AVX2 ones on the same CPU (docs/fitting.md).
    devices = [f"cpu ({torch.backends.cpu.get_cpu_capability()} kernels, {(t := apply_threads()).threads} thread(s), {t.reason})"]
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
    models.update(_texture_models_info(TEXTURE_MODEL))
    models["regressor"] = _regressor_info()
    return {
        "ganfit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "dlib": dlib_version,
        "devices": devices,
        "models": models,
    }


def _texture_models_info(projection: str) -> dict[str, Any]:
    """``info``'s texture entries: the texture model ``reconstruct`` uses by default, and the
    shipped GAN with the figures and licence from its provenance file."""
    from .fit.settings import FitSettings
    from .texture.model import SHIPPED_GAN, shipped_gan_provenance

    default = FitSettings().texture_model
    entries: dict[str, Any] = {}
    try:
        provenance = shipped_gan_provenance()
    except GanfitError as exc:
        return {"texture": {"error": str(exc)}}
    if provenance is not None:
        quality = provenance.get("quality") or {}
        gan: dict[str, Any] = {
            "name": "UV texture GAN trained by the project (StyleGAN2-style, paper 3.1)",
            "path": str(SHIPPED_GAN),
            "use": "default" if default == str(SHIPPED_GAN) else "with `reconstruct --texture-model gan`",
            "trained": f"{provenance.get('steps')} steps, {provenance.get('images_seen')} images",
            "licence": provenance.get("data", {}).get("licence") if isinstance(provenance.get("data"), dict) else None,
        }
        detail = provenance.get("detail")
        if isinstance(detail, dict):
            gan["detail stage"] = f"{detail.get('steps')} steps (ganfit train-texture-detail)"
        if isinstance(quality, dict) and quality.get("kid_heldout") is not None:
            gan["KIDx1e3 vs held-out"] = quality["kid_heldout"]
            if quality.get("kid_heldout_pca") is not None:
                gan["KIDx1e3 of PCA"] = f"{quality['kid_heldout_pca']} ({quality.get('kid_heldout_pca_model')})"
        entries["texture_gan"] = gan
    if default is None:
        entries["texture"] = {"name": projection, "path": "(computed from each photo)",
                              "use": "default; `--texture-model gan|FILE` fits a texture model's latent instead"}
    return entries


def _regressor_info() -> dict[str, Any]:
    """``info``'s entry for the Fast-GANFit regression network: its provenance and licence."""
    from .regress.weights import SHIPPED_REGRESSOR, regressor_provenance

    try:
        provenance = regressor_provenance()
    except GanfitError as exc:
        return {"error": str(exc)}
    if provenance is None or not SHIPPED_REGRESSOR.is_file():
        return {"error": f"{SHIPPED_REGRESSOR} is missing: reinstall ganfit (modes fast and ganfit++ need it)"}
    steps = provenance.get("steps") or {}
    data = provenance.get("data") or {}
    entry: dict[str, Any] = {
        "name": "Fast-GANFit regression network trained by the project (paper 4)",
        "path": str(SHIPPED_REGRESSOR),
        "use": f"`reconstruct --mode fast|ganfit++` (the default mode is {DEFAULT_MODE})",
        "parameters": provenance.get("parameters"),
        "trained": f"{steps.get('stage1')} landmark + {steps.get('stage2')} full-objective steps on "
                   f"{(provenance.get('hardware') or {}).get('device')}, {provenance.get('wall_clock_hours')} h",
        "licence": data.get("licence") if isinstance(data, dict) else None,
    }
    return entry


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


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, a closing terminal, a service manager) stops like Ctrl-C: the atomic
    writer removes its temporary and leaves no partial result (issue 16)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (main() called from a library's worker)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    _stop_on_sigterm()
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
        if args.command == "info":
            return _info(args)
        return args.func(args)
    except GanfitError as exc:
        print(f"ganfit: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("ganfit: interrupted; no partial result was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
