"""Calibrate the classifier backends on FairFace's val split and compare them, fairly.

  .venv/bin/python tools/fairface_fit.py raw  [--out .run/fairface-val-raw.npz]
  .venv/bin/python tools/fairface_fit.py fit  [--raw .run/fairface-val-raw.npz] [--check UTK.npz]
  .venv/bin/python tools/fairface_fit.py noise [--system faceapi-fairface,cydral-fairface]

FairFace val (4,835 photos; 4,314 without the 10-19 group, which straddles the child/adult
line) is balanced in race, clean, CC BY 4.0, and in no network's training: face-api's
was fitted on UTKFace, which the dev set is drawn from, so calibrations fitted there
flatter it (issue 26). Race is read only to measure the spread between groups.

- `raw`: every photo's largest face found as the product finds faces in stills
  (analyze.find_many: the photo, then the photo with a border), each network's raw
  outputs on that face (face-api's: regressed age and P(male); Cydral's: the age
  distribution over its 81 bins and P(male)), flip TTA and the exposure floor as
  config.yaml runs them. Cached in one .npz; the fits are then instant.
- `fit`: for each backend and ensemble, the calibration the service applies
  (classify.RegressionCalibration: two age knots at the class lines, the class spread,
  a gender threshold; for ensembles the members' weights and a whole-ensemble age map)
  fitted on half of val and scored on the other half, both ways (two-fold, split by
  photo, stratified by age group x gender), then fitted on all of val: that last fit is
  what classify.py carries. Scores are `edge eval`'s (evaluate.fairness: balanced by age
  group x gender, misses wrong on every metric), on 10-19-less val.

Fitting objective (one number): balanced age-class accuracy + balanced gender accuracy
13+, both as `edge eval` computes them; knots and threshold searched on grids.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAIRFACE = ROOT.parent / "shared" / "faces" / "fairface" / "labels.csv"
RAW = ROOT / ".run" / "fairface-val-raw.npz"
SEED = 20261206

# backend -> (kind, manifest entries)
NETWORKS = {
    "faceapi": ("faceapi", ("faceapi",)),
    "faceapi-fairface": ("faceapi", ("faceapi-fairface",)),
    "cydral": ("cydral", ("age", "gender")),
    "cydral-fairface": ("cydral", ("cydral-fairface-age", "cydral-fairface-gender")),
}
CHILD_GRID = np.arange(12.0, 26.01, 0.5)
OLD_GRID = np.arange(45.0, 70.01, 0.5)
SHIFT_GRID = np.round(np.arange(-1.5, 1.501, 0.1), 2)  # gender log-odds shift
SPREAD_GRID = np.arange(0.05, 0.40, 0.01)
WEIGHT_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)


def labels_val(labels_csv: Path):
    """FairFace's val split; every row of a set without splits (the UTKFace dev set)."""
    from edge.commands import evaluate

    labels = evaluate.read_labels(labels_csv)
    if "split" not in labels[0].columns:
        return labels
    return evaluate.select(labels, labels_csv, [("split", {"val"})])


def build_networks(cfg, paths: dict) -> dict:
    """Each backend of NETWORKS whose files the manifest has, built as the service builds
    it (`classify.create`: config.yaml's chip settings, faceapi-fairface's crop rule,
    cydral-fairface's gender scales)."""
    from edge.pipeline import classify

    nets: dict = {}
    for name, (_, entries) in NETWORKS.items():
        if not all(e in paths for e in entries):
            print(f"{name}: not in the manifest, skipped", file=sys.stderr)
            continue
        alone = dataclasses.replace(cfg.classifier, backend=name)
        nets[name] = classify.create(dataclasses.replace(cfg, classifier=alone), paths)
    return nets


def cmd_raw(args) -> int:
    from tqdm import tqdm

    from edge import config as config_mod
    from edge.inference import modelstore
    from edge.pipeline import analyze, detect
    from edge.records import Detections

    cfg = config_mod.load(ROOT / "config.yaml")
    models_dir = cfg.resolve(cfg.models.dir)
    specs = modelstore.load_manifest(models_dir)
    names = {"centerface"} | {m for _, ms in NETWORKS.values() for m in ms if m in specs}
    paths = {n: modelstore.verify(specs[n], models_dir) for n in sorted(names)}
    detector = detect.create(cfg, paths)
    nets = build_networks(cfg, paths)
    labels = labels_val(Path(args.labels))
    n = len(labels)
    files = np.array([str(label.path.name) for label in labels])
    old = dict(np.load(args.out)) if Path(args.out).is_file() else {}
    if "files" in old and list(old["files"]) == list(files) and str(old["view"]) == args.view:
        out = old  # the faces found before: only networks not in it yet run
    else:
        out = {
            "files": files,
            "view": np.array(args.view),
            "rung": np.full(n, -1, np.int8),  # -1: no face; 0: on the photo; 1: with a border
            "box": np.zeros((n, 4), np.float32),
            "landmarks": np.zeros((n, 5, 2), np.float32),
        }
    todo = {name: net for name, net in nets.items() if f"{name}_male" not in out}
    for name in todo:
        kind = NETWORKS[name][0]
        out[f"{name}_age"] = np.full((n, 81) if kind == "cydral" else n, np.nan, np.float32)
        out[f"{name}_male"] = np.full(n, np.nan, np.float32)
    detect_now = out is not old
    for i, label in enumerate(tqdm(labels, desc="raw", unit="img", file=sys.stderr)):
        image = analyze.read_image(label.path)
        if args.view == "padded":  # the photo with a border only (edge eval before issue 26)
            image = analyze.pad(image)
        if detect_now:
            (frame,), (faces,), (width,) = analyze.find_many(detector, [image])
            if len(faces) == 0:
                continue
            best = faces[int(np.argmax(faces.areas))]
            out["rung"][i] = int(width > 0)
            out["box"][i], out["landmarks"][i] = best.boxes[0], best.landmarks[0]
        elif out["rung"][i] < 0:
            continue
        else:
            frame = analyze.pad(image) if out["rung"][i] == 1 else image
            best = Detections(
                out["box"][i : i + 1], np.ones(1, np.float32), out["landmarks"][i : i + 1]
            )
        for name, net in todo.items():
            age, male = net.raw(*net.chips([frame], [best]))
            out[f"{name}_age"][i], out[f"{name}_male"][i] = age[0], male[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {n} photos, {int((out['rung'] >= 0).sum())} with a face")
    return 0


# --- systems: raw outputs + a calibration -> predictions -----------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    knots: tuple[float, float] = (18.0, 60.0)  # raw ages mapped to 18 and 60
    spread: float = 0.19  # regression networks' class spread
    shift: float = 0.0  # gender log-odds shift (a threshold t: shift = logit(t))


def member_ages(d, m: Member) -> np.ndarray:
    """Calibrated age; for Cydral the bins are mapped, then the expectation taken."""
    from edge.pipeline.classify import AGE_BINS

    raw = d[f"{m.name}_age"]
    xp, fp = [0.0, m.knots[0], m.knots[1], 80.0], [0.0, 18.0, 60.0, 80.0]
    if raw.ndim == 2:
        return raw @ np.interp(AGE_BINS, xp, fp)
    return _knot_map(raw, m.knots)


def _knot_map(raw, knots):
    from edge.pipeline.classify import RegressionCalibration

    return RegressionCalibration(
        age_knots=((0.0, 0.0), (knots[0], 18.0), (knots[1], 60.0), (80.0, 80.0))
    ).ages(raw)


def member_class_probs(d, m: Member, ages: np.ndarray) -> np.ndarray:
    from edge.pipeline.classify import AGE_BINS, RegressionCalibration, class_masks

    raw = d[f"{m.name}_age"]
    if raw.ndim == 2:
        bin_ages = np.interp(AGE_BINS, [0.0, m.knots[0], m.knots[1], 80.0], [0, 18, 60, 80])
        return raw @ class_masks(bin_ages, 18, 60).T
    return RegressionCalibration(age_spread=m.spread).class_probs(ages, 18, 60)


def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


@dataclasses.dataclass(frozen=True)
class System:
    members: tuple[Member, ...]
    weights: tuple[float, ...] = (1.0,)
    gender_weights: tuple[float, ...] = (1.0,)
    whole: tuple[float, float, float] | None = None  # ensemble knots (c, o) and spread
    shift: float = 0.0  # ensemble gender shift

    def predict(self, d):
        ages = [member_ages(d, m) for m in self.members]
        w = np.asarray(self.weights) / sum(self.weights)
        gw = np.asarray(self.gender_weights) / sum(self.gender_weights)
        age = sum(wi * a for wi, a in zip(w, ages, strict=True))
        z = sum(
            gi * (logit(d[f"{m.name}_male"]) - m.shift)
            for gi, m in zip(gw, self.members, strict=True)
        )
        male = 1 / (1 + np.exp(-(z - self.shift)))
        if self.whole is not None:
            from edge.pipeline.classify import RegressionCalibration

            age = _knot_map(age, self.whole[:2])
            probs = RegressionCalibration(age_spread=self.whole[2]).class_probs(age, 18, 60)
        else:
            probs = sum(
                wi * member_class_probs(d, m, a)
                for wi, m, a in zip(w, self.members, ages, strict=True)
            )
        return age, probs, male


def evaluate_system(
    d, labels, idx, system: System, by=("race",), balance=("age_group", "gender"), chance_rounds=0
) -> dict:
    from edge.commands import evaluate

    age, probs, male = system.predict(d)
    preds = []
    for i in idx:
        if d["rung"][i] < 0:
            preds.append(None)
        else:
            preds.append(
                {
                    "age": float(age[i]),
                    "class": int(np.argmax(probs[i])),
                    "male_prob": float(male[i]),
                }
            )
    sub = [labels[i] for i in idx]
    return evaluate.fairness(
        sub, preds, 18, 60, by=by, balance_by=balance, chance_rounds=chance_rounds
    )


def summary(r: dict) -> dict:
    race = r.get("by", {}).get("race", {}).get("spread", {}).get("gender_accuracy_13plus", {})
    worst = r["worst_cell"]["gender_accuracy_13plus"]
    return {
        "gender13": r["gender_accuracy_13plus"],
        "worst": worst["worst_value"],
        "worst_cell": worst["worst"],
        "class": r["age_class_accuracy"],
        "child": r["recall"]["child"],
        "adult": r["recall"]["adult"],
        "old": r["recall"]["old"],
        "race_spread": race.get("spread"),
        "misses": r["misses"],
    }


def objective(r: dict) -> float:
    return r["gender_accuracy_13plus"] + r["age_class_accuracy"]


# --- fitting --------------------------------------------------------------------------------


_LABEL_ARRAYS: dict = {}


def _label_arrays(labels, idx):
    """Per-row cell, true age, gender and the cell-balancing weights of rows idx, cached
    (the grids score thousands of calibrations on the same rows)."""
    key = (id(labels), idx.tobytes())
    if key not in _LABEL_ARRAYS:
        groups = np.array([labels[i].columns["age_group"] + labels[i].gender for i in idx])
        true_age = np.array([labels[i].age for i in idx])
        is_male = np.array([labels[i].gender == "male" for i in idx])
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        w = 1 / counts[inverse]
        tc = np.where(true_age < 18, 0, np.where(true_age >= 60, 2, 1))
        _LABEL_ARRAYS[key] = (w, tc, is_male, true_age >= 13)
    return _LABEL_ARRAYS[key]


def _fast_scores(d, labels, idx, age, probs, male):
    """Balanced class and gender-13+ accuracy without the per-group tables (for grids)."""
    w, tc, is_male, teen = _label_arrays(labels, idx)
    found = d["rung"][idx] >= 0
    cls = np.nan_to_num(probs[idx], nan=0).argmax(1)
    class_ok = found & (cls == tc)
    gender_ok = found & ((np.nan_to_num(male[idx], nan=0.5) >= 0.5) == is_male)
    return (w * class_ok).sum() / w.sum(), (w * gender_ok)[teen].sum() / w[teen].sum()


def fit_member(d, labels, idx, name: str) -> Member:
    raw = d[f"{name}_age"]
    best = None
    for c, o in itertools.product(CHILD_GRID, OLD_GRID):
        m = Member(name, (float(c), float(o)))
        ages = member_ages(d, m)
        if raw.ndim == 2:
            probs = member_class_probs(d, m, ages)
        else:  # the class is the calibrated age's side of the lines (spread fitted after)
            probs = np.stack([ages < 18, (ages >= 18) & (ages < 60), ages >= 60], 1).astype(float)
        cls, _ = _fast_scores(d, labels, idx, ages, probs, np.full(len(ages), 0.5))
        key = (round(cls, 6), -abs(c - 18) - abs(o - 60))
        if best is None or key > best[0]:
            best = (key, m)
    m = best[1]
    if raw.ndim == 1:
        m = dataclasses.replace(m, spread=_fit_spread(d, labels, idx, member_ages(d, m)))
    z = logit(d[f"{name}_male"])
    return dataclasses.replace(m, shift=_fit_shift(d, labels, idx, z))


def _fit_spread(d, labels, idx, ages) -> float:
    """The class spread by log loss of the true class (balanced cells)."""
    from edge.pipeline.classify import RegressionCalibration

    true_age = np.array([labels[i].age for i in idx])
    tc = np.where(true_age < 18, 0, np.where(true_age >= 60, 2, 1))
    found = d["rung"][idx] >= 0
    a = ages[idx][found]

    def loss(s):
        p = RegressionCalibration(age_spread=s).class_probs(a, 18, 60)
        return -np.mean(np.log(np.clip(p[np.arange(len(a)), tc[found]], 1e-6, 1)))

    return float(min(SPREAD_GRID, key=loss))


def _fit_shift(d, labels, idx, z) -> float:
    best = None
    for s in SHIFT_GRID:
        male = 1 / (1 + np.exp(-(z - s)))
        _, g = _fast_scores(d, labels, idx, np.zeros(len(z)), np.zeros((len(z), 3)), male)
        key = (round(g, 6), -abs(s))
        if best is None or key > best[0]:
            best = (key, float(s))
    return best[1]


def fit_system(d, labels, idx, names: tuple[str, ...]) -> System:
    members = tuple(fit_member(d, labels, idx, n) for n in names)
    if len(names) == 1:
        return System(members)
    best = None
    for w in WEIGHT_GRID:
        for gw in WEIGHT_GRID:
            base = System(members, (w, 1 - w), (gw, 1 - gw))
            age = base.predict(d)[0]
            whole = _fit_whole(d, labels, idx, age)
            z = sum(
                g * (logit(d[f"{m.name}_male"]) - m.shift)
                for g, m in zip((gw, 1 - gw), members, strict=True)
            )
            shift = _fit_shift(d, labels, idx, z)
            system = dataclasses.replace(base, whole=whole, shift=shift)
            cls, g = _fast_scores(d, labels, idx, *system.predict(d))
            if best is None or cls + g > best[0]:
                best = (cls + g, system)
    return best[1]


def _fit_whole(d, labels, idx, ages) -> tuple[float, float, float]:
    best = None
    for c, o in itertools.product(CHILD_GRID, OLD_GRID):
        a = _knot_map(ages, (c, o))
        probs = np.stack([a < 18, (a >= 18) & (a < 60), a >= 60], 1).astype(float)
        cls, _ = _fast_scores(d, labels, idx, a, probs, np.full(len(a), 0.5))
        key = (round(cls, 6), -abs(c - 18) - abs(o - 60))
        if best is None or key > best[0]:
            best = (key, (float(c), float(o)))
    c, o = best[1]
    return c, o, _fit_spread(d, labels, idx, _knot_map(ages, (c, o)))


def folds(labels, idx) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of idx, each age group x gender cell split evenly (fixed seed)."""
    rng = np.random.default_rng(SEED)
    a, b = [], []
    cells: dict[str, list[int]] = {}
    for i in idx:
        cells.setdefault(labels[i].columns["age_group"] + labels[i].gender, []).append(i)
    for key in sorted(cells):
        members = rng.permutation(cells[key])
        a += list(members[::2])
        b += list(members[1::2])
    return np.sort(a), np.sort(b)


SYSTEMS = (
    ("faceapi",),
    ("cydral",),
    ("faceapi", "cydral"),
    ("faceapi-fairface",),
    ("cydral-fairface",),
    ("faceapi-fairface", "cydral"),
    ("faceapi-fairface", "cydral-fairface"),
)


def cmd_fit(args) -> int:
    d = dict(np.load(args.raw))
    labels = labels_val(Path(args.labels))
    assert [label.path.name for label in labels] == list(d["files"]), "raw outputs are stale"
    idx = np.array([i for i, label in enumerate(labels) if label.columns["age_group"] != "10-19"])
    half_a, half_b = folds(labels, idx)
    rows = {}
    for names in SYSTEMS:
        if not all(f"{n}_age" in d for n in names):
            continue
        key = " + ".join(names)
        held_out = {}
        for fit_on, score_on in ((half_a, half_b), (half_b, half_a)):
            system = fit_system(d, labels, fit_on, names)
            age, probs, male = system.predict(d)
            held_out.setdefault("preds", []).append((score_on, age, probs, male))
        # pool the two held-out halves into one prediction per photo
        age = np.full(len(labels), np.nan)
        probs = np.full((len(labels), 3), np.nan)
        male = np.full(len(labels), np.nan)
        for score_on, a, p, m in held_out["preds"]:
            age[score_on], probs[score_on], male[score_on] = a[score_on], p[score_on], m[score_on]
        cv = summary(_score_arrays(d, labels, idx, age, probs, male))
        final = fit_system(d, labels, idx, names)
        in_sample = summary(evaluate_system(d, labels, idx, final))
        rows[key] = {"two_fold": cv, "fitted_on_all": in_sample, "system": _describe(final)}
        if args.check:  # the same fit on a second set, scored as `edge eval` scores it there
            dc = dict(np.load(args.check))
            lc = labels_val(Path(args.check_labels))
            every = np.arange(len(lc))
            scored = evaluate_system(dc, lc, every, final, by=(), balance=())
            rows[key]["check"] = {
                "gender13": scored["gender_accuracy_13plus"],
                "class": scored["age_class_accuracy"],
                "mae": scored["age_mae"],
                "misses": scored["misses"],
            }
        print(json.dumps({key: rows[key]}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _score_arrays(d, labels, idx, age, probs, male) -> dict:
    class Fixed(System):
        def predict(self, _d):  # type: ignore[override]
            return age, probs, male

    return evaluate_system(d, labels, idx, Fixed(()))


def _describe(system: System) -> dict:
    return {
        "members": [dataclasses.asdict(m) for m in system.members],
        "weights": system.weights,
        "gender_weights": system.gender_weights,
        "whole": system.whole,
        "shift": system.shift,
    }


def cmd_noise(args) -> int:
    """How big the race gap in gender 13+ is by chance: the fitted system's predictions
    scored as `edge eval --by race --balance-by age_group,gender` scores them, whose
    `chance` shuffles race among the faces of each age group x gender cell (every race
    keeps its mix of cells) and measures the gap again, `--rounds` times."""
    d = dict(np.load(args.raw))
    labels = labels_val(Path(args.labels))
    idx = np.array([i for i, label in enumerate(labels) if label.columns["age_group"] != "10-19"])
    system = fit_system(d, labels, idx, tuple(args.system.split(",")))
    r = evaluate_system(d, labels, idx, system, chance_rounds=args.rounds)["by"]["race"]
    gap, chance = r["spread"]["gender_accuracy_13plus"], r["chance"]["gender_accuracy_13plus"]
    print(json.dumps({"system": args.system, "gap": gap["spread"], **chance}))
    return 0


def cmd_floor(args) -> int:
    """The race gap a classifier shows on FairFace val when race makes no difference to it
    at all: every age group x gender cell (13+) right with the same probability for every
    race, each race balanced over its cells as `edge eval --balance-by age_group,gender`
    balances it; binomial draws on val's own cell sizes, seed fixed. No network is run."""
    labels = labels_val(Path(args.labels))
    groups = sorted({label.columns["age_group"] for label in labels} - {"0-2", "3-9", "10-19"})
    races = sorted({label.columns["race"] for label in labels})
    sizes = np.zeros((len(races), len(groups) * 2), int)
    for label in labels:
        if label.columns["age_group"] in groups:
            cell = groups.index(label.columns["age_group"]) * 2 + (label.gender == "male")
            sizes[races.index(label.columns["race"]), cell] += 1
    rng = np.random.default_rng(SEED)
    print(
        json.dumps(
            {
                "cells": int(sizes.size),
                "under_10": int((sizes < 10).sum()),
                "empty": int((sizes == 0).sum()),
            }
        )
    )
    for p in args.accuracy:
        right = rng.binomial(sizes, p, size=(args.rounds, *sizes.shape)) / np.maximum(sizes, 1)
        per_race = np.nanmean(np.where(sizes > 0, right, np.nan), axis=2)
        gaps = per_race.max(axis=1) - per_race.min(axis=1)
        print(
            json.dumps(
                {
                    "accuracy": p,
                    "gap_median": round(float(np.median(gaps)), 3),
                    "gap_p90": round(float(np.quantile(gaps, 0.9)), 3),
                    "share_at_most_0.05": round(float(np.mean(gaps <= 0.05)), 2),
                }
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default=str(FAIRFACE))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("raw", help="each network's raw outputs on FairFace val, cached")
    p.add_argument("--out", default=str(RAW))
    p.add_argument(
        "--view",
        choices=("product", "padded"),
        default="product",
        help="product: as the photo API finds faces; padded: every photo bordered first",
    )
    p.set_defaults(func=cmd_raw)
    p = sub.add_parser("fit", help="fit and score every backend and ensemble, two-fold")
    p.add_argument("--raw", default=str(RAW))
    p.add_argument("--out", help="write the table as JSON")
    p.add_argument("--check", help="raw outputs of a second set (`raw --labels ... --out`)")
    p.add_argument(
        "--check-labels",
        default=str(ROOT.parent / "shared" / "faces" / "utkface-dev" / "labels.csv"),
    )
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("noise", help="the race gap of a fitted system against chance")
    p.add_argument("--raw", default=str(RAW))
    p.add_argument("--system", default="faceapi-fairface,cydral-fairface")
    p.add_argument("--rounds", type=int, default=500)
    p.set_defaults(func=cmd_noise)
    p = sub.add_parser("floor", help="the race gap of a classifier blind to race, by chance")
    p.add_argument(
        "--accuracy", type=float, nargs="+", default=[0.9, 0.915, 0.93, 0.95, 0.96, 0.97, 0.98]
    )
    p.add_argument("--rounds", type=int, default=4000)
    p.set_defaults(func=cmd_floor)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
