"""Shape error in millimetres by the paper's MICC protocol (5.3.1), on a synthetic test set that
has exact ground truth: 50 heads drawn from the full ``anny`` model, rendered in Cycles.

    python benchmarks/micc_synthetic.py build    [--out /work/micc-synthetic] [--uv-set DIR]
    python benchmarks/micc_synthetic.py evaluate [--out /work/micc-synthetic] [--modes ganfit,fast,ganfit++]
                                                 [--markdown PATH]

Why synthetic: the MICC Florence scans need a licence and a download; anny's heads come from
its own nonlinear phenotypes and local-change targets (not the engine's linearised basis), so
the set tests the engine's shape space against a richer one with exact millimetre ground truth.
docs/micc-benchmark.md has the protocol, the commands and the measured table.

Three processes never share torch and bpy (they clash, as in Blender itself): ``build`` samples
the heads with anny (torch) and starts this script again as ``render`` (bpy only) for Cycles;
``evaluate`` runs the engine. The output folder holds renders of UTKFace-derived textures:
keep it outside the repository (default /work/micc-synthetic) and never commit it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEAD_MODEL = ROOT / "backend" / "ganfit" / "models" / "data" / "anny_head.npz"
DEFAULT_OUT = Path("/work/micc-synthetic")
DEFAULT_UV_SET = Path("/work/uvsets/utkface-all")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "micc_synthetic.json"
MODES = ("ganfit", "fast", "ganfit++")
ANNY_VERSION = "0.6.2"
UV_BUILD_HINT = ("build it with `ganfit texture-dataset --images ../shared/data/utkface/crop_part1 --out {folder}` "
                 "(its 'test' split is used) or pass --uv-set")

# anny is z up, face toward -y; the engine is y up, face toward +z (backend PROVENANCE.md).
ANNY_TO_ENGINE = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# The engine's mean phenotype (anny units); the anny mean evaluated here must reproduce the
# shipped mean head, which checks vertex order, frame and units in one go.
ENGINE_MEAN_PHENOTYPE = {"gender": 0.5, "age": 0.78, "muscle": 0.5, "weight": 0.5, "height": 0.5,
                         "proportions": 0.5, "cupsize": 0.5, "firmness": 0.5, "african": 0.5, "asian": 0.5,
                         "caucasian": 0.5}
# Local changes that shape the face and head. Left out: neck sliders (outside the crop),
# head-angle-out and head-trans-* (rigid moves of the head on the body, removed by anchoring).
FACE_GROUPS = ("cheek", "chin", "ear", "eyebrows", "eye", "forehead", "head", "mouth", "nose")
RIGID_SLIDERS = ("head-angle-out", "head-trans-forward", "head-trans-up", "head-trans-out")
# The outer surface a scanner would see: skin and the front of the eyes (no mouth or eye cavities).
OUTER_SEGMENTS = ("head", "eye_front.L", "eye_front.R")


class MiccError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@dataclass(frozen=True)
class BuildSettings:
    """How the synthetic set is drawn and rendered; recorded in ``set.json``."""

    count: int = 50
    seed: int = 0
    size: int = 512  # render width and height, pixels
    samples: int = 32  # Cycles samples per pixel
    threads: int = 1  # Cycles threads (a training job shares this 2-core machine)
    # Identity: anny's own phenotype distribution (WHO-calibrated height/weight/muscle given
    # age), adults only, races mixed at random; every face local change ~ N(0, std), each
    # slider's std capped so that one std moves no vertex of the face crop by more than
    # slider_cap_mm (MakeHuman's sliders span 2 mm to 5 cm at full value).
    min_age_years: float = 18.0
    max_age_years: float = 80.0
    slider_std: float = 1.0 / 3.0
    slider_cap_mm: float = 5.0
    # Expression: this many random ARKit actions per head, weights uniform in [0.1, max].
    expressions_per_head: int = 3
    max_expression_weight: float = 0.6
    # Camera: yaw and pitch uniform in +-these, at a random distance, looking at the face
    # centre; focal length = 1.5 x image width (54 mm full-frame), the engine's default guess
    # for photos without EXIF, so the set measures shape rather than focal-length guessing.
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 20.0
    distance_m: tuple[float, float] = (0.35, 0.55)
    focal_over_width: float = 1.5
    # Light: one point light in front of the face, plus a grey world (ambient + background).
    light_azimuth_deg: float = 70.0
    light_elevation_deg: tuple[float, float] = (-15.0, 50.0)
    light_distance_m: tuple[float, float] = (0.7, 1.5)
    light_power_at_1m_w: tuple[float, float] = (25.0, 60.0)
    ambient_strength: tuple[float, float] = (0.15, 0.45)


@dataclass(frozen=True)
class EvalSettings:
    """What ``evaluate`` runs; the MICC protocol constants live in ``micc_metric.MiccSettings``."""

    modes: tuple[str, ...] = MODES
    regressor: str | None = None  # None: the shipped weights
    limit: int | None = None
    force: bool = False  # ignore cached per-head results


# --------------------------------------------------------------------------------------------
# Small helpers


def write_json(path: Path, data: Any) -> None:
    """Atomic, so an interrupted run never leaves half a file that a re-run would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def head_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "heads").glob("head_*") if (p / "head.json").is_file())


def nose_tip_index(mean: np.ndarray) -> int:
    """The pronasale: the most forward (+z) vertex near the midline of the engine's mean head;
    every anny head shares the topology, so the same vertex is every head's nose tip."""
    midline = np.flatnonzero(np.abs(mean[:, 0]) < 0.002)
    return int(midline[mean[midline, 2].argmax()])


def outer_faces(head_model: dict[str, np.ndarray]) -> np.ndarray:
    names = [str(n) for n in head_model["face_segment_names"]]
    keep = np.isin(head_model["face_segments"], [names.index(n) for n in OUTER_SEGMENTS])
    return head_model["faces"][keep]


def load_head_model() -> dict[str, np.ndarray]:
    with np.load(HEAD_MODEL) as data:
        return {k: data[k] for k in ("mean", "faces", "uvs", "uv_faces", "face_segments", "face_segment_names")}


# --------------------------------------------------------------------------------------------
# build: sample heads with anny (torch), then render them in a bpy child process


class AnnyHeads:
    """anny's full head rig evaluated in rest pose, anchored at the head joint and turned into
    the engine's frame: exactly how the engine's head model was built (tools/build_head_model.py),
    but with anny's nonlinear phenotypes and per-side targets kept."""

    def __init__(self) -> None:
        try:
            import anny
            import torch
        except ImportError as exc:
            raise MiccError(f"anny is not installed ({exc}): pip install -e '.[model-build]' (anny=={ANNY_VERSION})")
        if anny.__version__ != ANNY_VERSION:
            print(f"warning: anny {anny.__version__} installed; the engine's head was built from {ANNY_VERSION}",
                  file=sys.stderr)
        self.anny, self.torch = anny, torch
        self.model = anny.Anny(rig="makehuman-head", topology="head", local_changes="all",
                               facial_actions="all", phenotypes="all")
        self.head_joint = self.model.bone_labels.index("head")
        self.version = anny.__version__

    def vertices(self, phenotype: dict[str, float], local_changes: dict[str, float] | None = None,
                 actions: dict[str, float] | None = None) -> np.ndarray:
        """(V, 3) engine frame, metres."""
        m = self.model
        with self.torch.no_grad():
            _, ph, lc, fa = m.get_tensor_inputs(None, phenotype, local_changes or {}, actions or {})
            rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(ph, lc, fa))
        anchored = rest["rest_vertices"][0].double().numpy() - rest["rest_bone_heads"][0, self.head_joint].double().numpy()
        return anchored @ ANNY_TO_ENGINE.T

    def face_sliders(self) -> list[str]:
        prefixes = tuple(f"{side}{group}-" for group in FACE_GROUPS for side in ("", "l-", "r-"))
        return [s for s in self.model.local_change_labels if s.startswith(prefixes) and s not in RIGID_SLIDERS]

    def sample_phenotypes(self, count: int, settings: BuildSettings, seed: int) -> list[dict[str, float]]:
        """anny's SimpleShapeDistribution over adults (morphological age uniform in the range)."""
        from anny.shape_distribution import SimpleShapeDistribution

        torch = self.torch
        torch.manual_seed(seed)
        ages = torch.distributions.Uniform(torch.tensor(settings.min_age_years, dtype=self.model.dtype),
                                           torch.tensor(settings.max_age_years, dtype=self.model.dtype))
        years, values = SimpleShapeDistribution(self.model, morphological_age_distribution=ages).sample(count)
        races = torch.distributions.Dirichlet(torch.ones(3, dtype=self.model.dtype)).sample((count,))
        out = []
        for i in range(count):
            phenotype = {k: float(v[i]) for k, v in values.items()}
            phenotype.update(african=float(races[i, 0]), asian=float(races[i, 1]), caucasian=float(races[i, 2]))
            phenotype["age_years"] = float(years[i])  # for the record; anny ignores unknown keys below
            out.append(phenotype)
        return out


def slider_stds(heads: AnnyHeads, settings: BuildSettings, mean: np.ndarray, crop: np.ndarray) -> dict[str, float]:
    """Each face slider's std: ``slider_std``, capped so one std moves no face vertex by more
    than ``slider_cap_mm`` (measured at +-1 on anny's mean head)."""
    stds = {}
    for name in heads.face_sliders():
        moved = max(np.linalg.norm(heads.vertices(ENGINE_MEAN_PHENOTYPE, {name: v})[crop] - mean[crop], axis=1).max()
                    for v in (-1.0, 1.0))
        if moved > 1e-5:
            stds[name] = min(settings.slider_std, settings.slider_cap_mm / 1000.0 / moved)
    return stds


def build(out: Path, uv_set: Path, settings: BuildSettings) -> None:
    """Sample ``count`` heads, save their ground truth (millimetres) and recipes, render them."""
    sys.path.insert(0, str(ROOT / "backend"))
    from ganfit.errors import GanfitError
    from ganfit.texture.model import UvTextureSet

    if not uv_set.is_dir():
        raise MiccError(f"UV folder {uv_set} not found: " + UV_BUILD_HINT.format(folder=uv_set))
    try:
        textures = UvTextureSet.open(uv_set, "test")
    except GanfitError as exc:
        raise MiccError(f"{exc}; " + UV_BUILD_HINT.format(folder=uv_set)) from exc
    _check_bpy()
    model = load_head_model()
    nose = nose_tip_index(model["mean"])
    started = time.perf_counter()
    heads = AnnyHeads()
    anny_mean = heads.vertices(ENGINE_MEAN_PHENOTYPE)
    frame_error_mm = float(np.abs(anny_mean - model["mean"]).max() * 1000)
    if frame_error_mm > 0.1:
        raise MiccError(f"anny's mean head differs from the engine's by {frame_error_mm:.2f} mm: wrong anny "
                        f"version or vertex order (expected anny {ANNY_VERSION})")
    crop = np.linalg.norm(anny_mean - anny_mean[nose], axis=1) <= 0.095
    stds = slider_stds(heads, settings, anny_mean, crop)
    phenotypes = heads.sample_phenotypes(settings.count, settings, settings.seed)
    actions = list(heads.model.facial_action_labels)
    surface = outer_faces(model)
    (out / "heads").mkdir(parents=True, exist_ok=True)
    for i in range(settings.count):
        rng = np.random.default_rng([settings.seed, i])
        sliders = {n: float(np.clip(rng.normal(0.0, s), -1.0, 1.0)) for n, s in sorted(stds.items())}
        chosen = rng.choice(len(actions), size=settings.expressions_per_head, replace=False)
        expression = {actions[j]: float(rng.uniform(0.1, settings.max_expression_weight)) for j in sorted(chosen)}
        phenotype = {k: v for k, v in phenotypes[i].items() if k != "age_years"}
        vertices = heads.vertices(phenotype, sliders, expression)
        texture = textures.names[int(rng.integers(len(textures)))]
        record = {
            "index": i, "seed": [settings.seed, i], "anny_version": heads.version,
            "phenotype": phenotype, "age_years": phenotypes[i]["age_years"],
            "local_changes": sliders, "expression": expression,
            "texture": str(textures.albedo_path(texture)), "texture_name": texture,
            "nose_tip_index": nose,
            "camera": _random_camera(rng, settings), "light": _random_light(rng, settings),
        }
        folder = out / "heads" / f"head_{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "gt_mm.npz", vertices_mm=(vertices * 1000).astype(np.float32),
                            faces=model["faces"], outer_faces=surface, uvs=model["uvs"], uv_faces=model["uv_faces"],
                            nose_tip_mm=(vertices[nose] * 1000).astype(np.float32))
        previous = folder / "head.json"
        if previous.is_file() and json.loads(previous.read_text()) != record:
            (folder / "photo.png").unlink(missing_ok=True)  # a changed recipe renders again
        write_json(previous, record)
    sampled = time.perf_counter() - started
    manifest = {"settings": asdict(settings), "uv_set": str(uv_set), "uv_split": "test", "uv_test_maps": len(textures),
                "anny_version": heads.version, "anny_vs_engine_mean_max_mm": frame_error_mm,
                "face_sliders": len(stds), "slider_std": stds, "units": "ground truth in millimetres, engine frame "
                "(y up, face toward +z); anny and the engine are both in metres",
                "nose_tip_index": nose, "sampling_seconds": round(sampled, 1)}
    write_json(out / "set.json", manifest)
    print(f"sampled {settings.count} anny heads in {sampled:.0f} s; rendering in Cycles ({settings.samples} samples, "
          f"{settings.size} px, {settings.threads} thread(s))", flush=True)
    started = time.perf_counter()
    code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "render", "--out", str(out),
                            "--samples", str(settings.samples), "--size", str(settings.size),
                            "--threads", str(settings.threads)])
    if code != 0:
        raise MiccError(f"rendering failed (exit status {code}); see the messages above")
    manifest["render_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "set.json", manifest)
    print(f"built {settings.count} heads in {out} (render {manifest['render_seconds']:.0f} s)")


def _check_bpy() -> None:
    """bpy loads in the render child only (never beside torch); check it imports before sampling."""
    code = subprocess.call([sys.executable, "-c", "import bpy"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if code != 0:
        raise MiccError(f"the bpy module does not import in {sys.executable}: pip install 'bpy==5.0.1' "
                        "(Python 3.11; `make install` does it) to render the set")


def _random_camera(rng: np.random.Generator, s: BuildSettings) -> dict[str, Any]:
    """Engine frame: looking at the face centre from a yaw/pitch direction."""
    yaw = float(rng.uniform(-s.max_yaw_deg, s.max_yaw_deg))
    pitch = float(rng.uniform(-s.max_pitch_deg, s.max_pitch_deg))
    distance = float(rng.uniform(*s.distance_m))
    target = np.array([0.0, 0.02, 0.08]) + rng.uniform(-0.01, 0.01, 3)
    y, p = math.radians(yaw), math.radians(pitch)
    position = target + distance * np.array([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])
    return {"yaw_deg": yaw, "pitch_deg": pitch, "distance_m": distance, "target": target.tolist(),
            "position": position.tolist(), "focal_over_width": s.focal_over_width}


def _random_light(rng: np.random.Generator, s: BuildSettings) -> dict[str, Any]:
    azimuth = float(rng.uniform(-s.light_azimuth_deg, s.light_azimuth_deg))
    elevation = float(rng.uniform(*s.light_elevation_deg))
    distance = float(rng.uniform(*s.light_distance_m))
    a, e = math.radians(azimuth), math.radians(elevation)
    position = np.array([0.0, 0.02, 0.05]) + distance * np.array([math.sin(a) * math.cos(e), math.sin(e),
                                                                   math.cos(a) * math.cos(e)])
    tint = rng.uniform(0.9, 1.0, 3)
    return {"azimuth_deg": azimuth, "elevation_deg": elevation, "distance_m": distance, "position": position.tolist(),
            "power_w": float(rng.uniform(*s.light_power_at_1m_w) * distance ** 2), "colour": tint.tolist(),
            "radius_m": float(rng.uniform(0.02, 0.15)), "ambient": float(rng.uniform(*s.ambient_strength)),
            "background": rng.uniform(0.3, 0.8, 3).tolist()}


# --------------------------------------------------------------------------------------------
# render: the bpy child (no torch here)


def render(out: Path, samples: int, size: int, threads: int) -> None:
    """Render every head without a photo.png in Cycles on the CPU."""
    try:
        import bpy
    except ImportError as exc:
        raise MiccError(f"bpy is not installed ({exc}): pip install 'bpy==5.0.1' (Python 3.11)")
    todo = [d for d in head_dirs(out) if not (d / "photo.png").is_file()]
    for n, folder in enumerate(todo, 1):
        started = time.perf_counter()
        _render_head(bpy, folder, samples, size, threads)
        print(f"  rendered {folder.name} ({n}/{len(todo)}) in {time.perf_counter() - started:.1f} s", flush=True)


def _to_blender(p: Any) -> tuple[float, float, float]:
    """Engine (y up, face +z) -> Blender (z up, face -y), as Blender's glTF importer does."""
    x, y, z = (float(v) for v in p)
    return (x, -z, y)


def _render_head(bpy: Any, folder: Path, samples: int, size: int, threads: int) -> None:
    from mathutils import Vector

    record = json.loads((folder / "head.json").read_text())
    with np.load(folder / "gt_mm.npz") as data:
        vertices = data["vertices_mm"].astype(np.float64) / 1000.0
        faces, uvs, uv_faces = data["faces"], data["uvs"], data["uv_faces"]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    mesh = bpy.data.meshes.new("head")
    mesh.from_pydata([_to_blender(v) for v in vertices], [], faces.tolist())
    uv_layer = mesh.uv_layers.new(name="UVMap")
    uv_layer.data.foreach_set("uv", uvs[uv_faces.reshape(-1)].astype(np.float32).ravel())
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
    mesh.update()
    head = bpy.data.objects.new("head", mesh)
    scene.collection.objects.link(head)

    material = bpy.data.materials.new("skin")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    image = nodes.new("ShaderNodeTexImage")
    image.image = bpy.data.images.load(record["texture"])
    material.node_tree.links.new(image.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.55
    mesh.materials.append(material)

    light = record["light"]
    lamp = bpy.data.lights.new("key", type="POINT")
    lamp.energy = light["power_w"]
    lamp.color = light["colour"]
    lamp.shadow_soft_size = light["radius_m"]
    lamp_object = bpy.data.objects.new("key", lamp)
    lamp_object.location = _to_blender(light["position"])
    scene.collection.objects.link(lamp_object)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (*light["background"], 1.0)
    background.inputs["Strength"].default_value = light["ambient"]
    scene.world = world

    camera = record["camera"]
    cam = bpy.data.cameras.new("camera")
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = 36.0
    cam.lens = camera["focal_over_width"] * 36.0
    cam.clip_start = 0.01
    cam_object = bpy.data.objects.new("camera", cam)
    cam_object.location = _to_blender(camera["position"])
    direction = Vector(_to_blender(camera["target"])) - Vector(_to_blender(camera["position"]))
    cam_object.rotation_mode = "QUATERNION"
    cam_object.rotation_quaternion = direction.to_track_quat("-Z", "Y")
    scene.collection.objects.link(cam_object)
    scene.camera = cam_object

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 4
    scene.cycles.seed = int(record["index"])
    scene.render.threads_mode = "FIXED"
    scene.render.threads = threads
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"  # a plain sRGB photo, as the engine assumes
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    target = folder / "photo.png"
    scene.render.filepath = str(folder / "photo.partial.png")
    bpy.ops.render.render(write_still=True)
    (folder / "photo.partial.png").replace(target)


# --------------------------------------------------------------------------------------------
# evaluate: the engine on each render, the MICC protocol against the ground truth


def regressor_file(settings: EvalSettings) -> Path:
    if settings.regressor:
        return Path(settings.regressor)
    from ganfit.regress.weights import SHIPPED_REGRESSOR

    return Path(SHIPPED_REGRESSOR)


def evaluate(out: Path, settings: EvalSettings) -> dict[str, Any]:
    """Per mode: every head reconstructed once (cached by mode, head, photo and weights) and
    scored with ICP allowing scale (the protocol) and rigid ICP (for comparison)."""
    sys.path.insert(0, str(ROOT / "backend"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from micc_metric import MiccSettings
    from report import file_sha256 as sha256

    heads = [d for d in head_dirs(out) if (d / "photo.png").is_file()][: settings.limit]
    if not heads:
        raise MiccError(f"no rendered heads in {out}: run `python benchmarks/micc_synthetic.py build --out {out}` first")
    model = load_head_model()
    surface = outer_faces(model)
    nose = nose_tip_index(model["mean"])
    protocol = MiccSettings()
    rigid = MiccSettings(allow_scale=False)
    weights = regressor_file(settings)
    rows: dict[str, Any] = {}
    for mode in settings.modes:
        # hashed per mode, just before its network loads: the weights file may be replaced
        # while an earlier mode runs
        weights_hash = sha256(weights) if weights.is_file() else "missing"
        key_base = {"mode": mode, "protocol": asdict(protocol),
                    "regressor_sha256": None if mode == "ganfit" else weights_hash,
                    "regressor": None if mode == "ganfit" else str(weights)}
        reconstructor = None
        per_head = []
        started = time.perf_counter()
        for folder in heads:
            key = {**key_base, "photo_sha256": sha256(folder / "photo.png"), "gt_sha256": sha256(folder / "gt_mm.npz")}
            cache = out / "eval" / mode.replace("+", "p") / f"{folder.name}.json"
            if cache.is_file() and not settings.force:
                cached = json.loads(cache.read_text())
                if cached.get("key") == key:
                    per_head.append(cached)
                    continue
            if reconstructor is None:
                reconstructor = _reconstructor(mode, settings.regressor)
            record = _evaluate_head(reconstructor, folder, out / "recon" / mode.replace("+", "p") / folder.name,
                                    surface, nose, protocol, rigid)
            record["key"], record["head"] = key, folder.name
            write_json(cache, record)
            per_head.append(record)
            status = (f"{record['symmetric_mm']:.2f} mm (rigid {record['rigid_mm']:.2f}), scale {record['scale']:.3f}"
                      if record["ok"] else f"failed: {record['error']}")
            print(f"  {mode} {folder.name}: {status}, {record['seconds']:.1f} s", flush=True)
        rows[mode] = _summary(mode, per_head, time.perf_counter() - started, weights_hash if mode != "ganfit" else None)
    return {"heads": len(heads), "set": str(out), "rows": rows, "protocol": asdict(protocol),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine(),
            "regressor": str(weights),
            "regressor_sha256": next((r["regressor_sha256"] for r in rows.values() if r["regressor_sha256"]), None)}


def _reconstructor(mode: str, regressor: str | None) -> Any:
    from ganfit.fit.reconstruct import Reconstructor
    from ganfit.settings import build_settings

    reconstructor = Reconstructor(build_settings({"mode": mode, "regressor": None if mode == "ganfit" else regressor}, "cli"))
    # Models load now, not inside the first head's time ("seconds per head with the models loaded").
    reconstructor.identity_network
    reconstructor.texture_model()
    if mode != "ganfit":
        reconstructor.regressor()
    return reconstructor


def _evaluate_head(reconstructor: Any, folder: Path, result_dir: Path, surface: np.ndarray, nose: int,
                   protocol: Any, rigid: Any) -> dict[str, Any]:
    from ganfit.errors import GanfitError
    from ganfit.io.result import read_result, write_result
    from micc_metric import shape_error

    with np.load(folder / "gt_mm.npz") as data:
        gt_vertices, gt_faces, gt_nose = data["vertices_mm"].astype(np.float64), data["outer_faces"], data["nose_tip_mm"]
    started = time.perf_counter()
    try:
        result = reconstructor.reconstruct(folder / "photo.png")
    except GanfitError as exc:
        return {"ok": False, "error": str(exc), "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    write_result(result, result_dir, force=True, exports=False)
    result = read_result(result_dir, load_images=False)
    pred = result.vertices.astype(np.float64) * 1000.0  # metres -> mm
    faces = surface if result.num_vertices == len(gt_vertices) else result.faces  # the engine's head: its outer surface
    scaled, alignment = shape_error(pred, faces, gt_vertices, gt_faces, gt_nose, pred[nose], protocol)
    fixed, _ = shape_error(pred, faces, gt_vertices, gt_faces, gt_nose, pred[nose], rigid)
    return {"ok": True, "seconds": seconds, "symmetric_mm": scaled.symmetric, "pred_to_gt_mm": scaled.pred_to_gt,
            "gt_to_pred_mm": scaled.gt_to_pred, "scale": scaled.scale, "icp_iterations": scaled.iterations,
            "rigid_mm": fixed.symmetric, "landmark_error_iod": result.landmark_error_iod}


def _summary(mode: str, per_head: list[dict[str, Any]], seconds: float, weights_hash: str | None) -> dict[str, Any]:
    ok = [r for r in per_head if r["ok"]]
    errors = np.array([r["symmetric_mm"] for r in ok])
    rigid = np.array([r["rigid_mm"] for r in ok])
    return {
        "mode": mode, "heads": len(per_head), "ok": len(ok),
        "failed": {r["head"]: r["error"] for r in per_head if not r["ok"]},
        "mean_mm": float(errors.mean()) if len(ok) else None, "std_mm": float(errors.std()) if len(ok) else None,
        "median_mm": float(np.median(errors)) if len(ok) else None,
        "rigid_mean_mm": float(rigid.mean()) if len(ok) else None, "rigid_std_mm": float(rigid.std()) if len(ok) else None,
        "mean_scale": float(np.mean([r["scale"] for r in ok])) if ok else None,
        # over the reconstructed heads: a photo refused at detection costs almost nothing
        "seconds_per_head": float(np.mean([r["seconds"] for r in ok])) if ok else None,
        "median_seconds_per_head": float(np.median([r["seconds"] for r in ok])) if ok else None,
        "wall_seconds_this_run": round(seconds, 1), "regressor_sha256": weights_hash,
    }


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, GANFIT_THREADS={os.environ.get('GANFIT_THREADS', 'default')}"


def table(report: dict[str, Any]) -> str:
    """The markdown table (also printed)."""
    lines = ["| mode | heads ok | shape error, mm (ICP + scale) | median | rigid ICP, mm | ICP scale | s/head |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"].values():
        if row["ok"]:
            lines.append(f"| {row['mode']} | {row['ok']}/{row['heads']} | {row['mean_mm']:.2f} ± {row['std_mm']:.2f} | "
                         f"{row['median_mm']:.2f} | {row['rigid_mean_mm']:.2f} ± {row['rigid_std_mm']:.2f} | "
                         f"{row['mean_scale']:.3f} | {row['seconds_per_head']:.2f} |")
        else:
            lines.append(f"| {row['mode']} | 0/{row['heads']} | - | - | - | - | - |")
    lines.append("")
    weights = ", ".join(f"{r['mode']} {r['regressor_sha256'][:12]}" for r in report["rows"].values() if r["regressor_sha256"])
    lines.append(f"{report['heads']} synthetic anny heads, {report['date']}, {report['machine']}."
                 + (f" Regressor weights {Path(report['regressor']).name}, sha256: {weights}." if weights else ""))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="sample the heads with anny and render them in Cycles")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder, outside the repository (default %(default)s)")
    b.add_argument("--uv-set", type=Path, default=DEFAULT_UV_SET,
                   help="UV albedo folder from `ganfit texture-dataset`; its 'test' split textures the heads (default %(default)s)")
    b.add_argument("--count", type=int, default=BuildSettings.count)
    b.add_argument("--seed", type=int, default=BuildSettings.seed)
    b.add_argument("--size", type=int, default=BuildSettings.size, help="render size, pixels (default %(default)s)")
    b.add_argument("--samples", type=int, default=BuildSettings.samples, help="Cycles samples (default %(default)s)")
    b.add_argument("--threads", type=int, default=BuildSettings.threads, help="Cycles threads (default %(default)s)")
    r = sub.add_parser("render", help=argparse.SUPPRESS)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--samples", type=int, required=True)
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--threads", type=int, required=True)
    e = sub.add_parser("evaluate", help="reconstruct every head per mode and print the MICC table")
    e.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the built set (default %(default)s)")
    e.add_argument("--modes", default=",".join(MODES), help="comma-separated (default %(default)s)")
    e.add_argument("--regressor", default=None, help="regression network weights (default: the shipped ones)")
    e.add_argument("--limit", type=int, default=None, help="only the first N heads")
    e.add_argument("--force", action="store_true", help="ignore cached per-head results")
    e.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    e.add_argument("--json", type=Path, default=DEFAULT_JSON, help="the full report (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            if args.count < 1 or args.size < 64 or args.samples < 1 or args.threads < 1:
                raise MiccError("--count, --samples and --threads must be at least 1 and --size at least 64")
            build(args.out, args.uv_set, BuildSettings(count=args.count, seed=args.seed, size=args.size,
                                                       samples=args.samples, threads=args.threads))
        elif args.command == "render":
            render(args.out, args.samples, args.size, args.threads)
        else:
            modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
            unknown = [m for m in modes if m not in MODES]
            if unknown or not modes:
                raise MiccError(f"--modes {args.modes!r}: choose from {', '.join(MODES)}")
            if args.regressor and not Path(args.regressor).is_file():
                raise MiccError(f"--regressor {args.regressor}: file not found")
            report = evaluate(args.out, EvalSettings(modes=modes, regressor=args.regressor, limit=args.limit,
                                                     force=args.force))
            text = table(report)
            print(text)
            write_json(args.json, report)
            if args.markdown:
                args.markdown.parent.mkdir(parents=True, exist_ok=True)
                args.markdown.write_text(text)
            print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
    except MiccError as exc:
        print(f"micc_synthetic: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
