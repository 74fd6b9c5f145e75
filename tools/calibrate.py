"""Fit each backend's age and gender calibration (edge/pipeline/classify.py) on a labelled set,
and score every backend and ensemble raw, calibrated in-sample and cross-validated.

  .venv/bin/python tools/calibrate.py LABELS.csv [--cache FILE.npz]

The networks run once per face (detector, flip TTA and exposure floor as in the
default config); their raw outputs are cached (--cache), so refits are instant.
Scores follow `edge eval` (largest face, class = most likely class, gender at
P(male) 0.5, a missed face wrong on everything), with balanced class accuracy (mean
of child, adult and old recall) as the fitting objective, so the old and child
classes weigh as much as the adult one whatever their share of the set.

What is fitted, per backend (a few numbers, nothing per image):
- cydral: the age map's two knots at the class boundaries (AGE_CALIBRATION), by
  balanced class accuracy, and a gender threshold;
- faceapi: the same two knots on its regressed age and the spread of true ages
  around the calibrated one (class probabilities, by log loss) (FACEAPI_CALIBRATION);
  no gender threshold (the folds disagree; --faceapi-threshold fits one);
- ensembles: the weighted mean of the calibrated members' ages, and of their P(male)
  on the log-odds scale (each member's age calibration fitted on the same training
  half; the Cydral gender threshold is a decision rule for that network alone, so an
  ensemble pools its unshifted log-odds, as classify.Ensemble does); then, "as a whole", the
  two knots and the spread fitted again on that mean age, as for faceapi
  (ENSEMBLE_CALIBRATIONS). Without that second fit ("members' mean") the class
  probabilities are the members' mean. Weights from a small grid.

Two-fold cross-validation (fit on one half, score the other, both ways, pooled)
says what a fit is worth on faces it never saw.

Gender pooling (last table): each member's log-odds calibrated by Platt scaling
(a * logit + b, by log loss on ages 13+, per training half) or left raw, pooled with
a grid of weights or with weights fitted by logistic regression (stacking), scored
held out by gender 13+ accuracy and log loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD_GRID = np.arange(12.0, 26.01, 0.5)
OLD_GRID = np.arange(40.0, 70.01, 0.5)
GENDER_GRID = np.arange(0.30, 0.701, 0.01)
SPREAD_GRID = np.arange(0.05, 0.601, 0.01)
FIT_FACEAPI_THRESHOLD = False
WEIGHT_GRID = (0.3, 0.4, 0.5, 0.55, 0.6, 0.7)  # faceapi's share in a faceapi + cydral ensemble


def raw_outputs(labels_csv: Path, cache: Path | None) -> dict[str, np.ndarray]:
    if cache and cache.is_file():
        return dict(np.load(cache))
    from tqdm import tqdm

    from edge import config as config_mod
    from edge.commands.evaluate import load_padded, read_labels
    from edge.pipeline import classify
    from edge.pipeline.analyze import FaceAnalyzer

    cfg = config_mod.load(ROOT / "config.yaml")
    ensemble = dataclasses.replace(
        cfg.classifier, backend="ensemble", members=["cydral", "faceapi"]
    )
    cfg = dataclasses.replace(cfg, classifier=ensemble)
    analyzer = FaceAnalyzer(cfg)
    cydral, face_api = analyzer.classifier.members
    assert isinstance(cydral, classify.CydralAgeGender)
    out = {
        k: []
        for k in (
            "age",
            "male",
            "found",
            "cydral_age_probs",
            "cydral_male",
            "faceapi_age",
            "faceapi_male",
        )
    }
    for label in tqdm(read_labels(labels_csv), desc="raw outputs", file=sys.stderr):
        frame = load_padded(label.path)
        faces = analyzer.detector(frame)
        out["age"].append(label.age)
        out["male"].append(label.gender == "male")
        out["found"].append(len(faces) > 0)
        if len(faces) == 0:
            out["cydral_age_probs"].append(np.full(len(classify.AGE_BINS), np.nan))
            for k in ("cydral_male", "faceapi_age", "faceapi_male"):
                out[k].append(np.nan)
            continue
        best = faces[int(np.argmax(faces.areas))]
        age_chips, gender_chips = cydral.chips([frame], [best])
        out["cydral_age_probs"].append(cydral._run(cydral._age, age_chips)[0])
        out["cydral_male"].append(cydral._run(cydral._gender, gender_chips)[0, 1])
        age, male = face_api.raw(*face_api.chips([frame], [best]))
        out["faceapi_age"].append(age[0])
        out["faceapi_male"].append(male[0])
    data = {k: np.array(v) for k, v in out.items()}
    if cache:
        np.savez_compressed(cache, **data)
    return data


# --- predictions from raw outputs and a calibration -------------------------------------


def cydral_predict(d, idx, knots, threshold):
    from edge.pipeline.classify import AGE_BINS, RegressionCalibration, class_masks

    bin_ages = np.interp(AGE_BINS, [0, knots[0], knots[1], 80], [0, 18, 60, 80])
    probs = d["cydral_age_probs"][idx]
    shift = RegressionCalibration(male_threshold=threshold)
    return (
        probs @ bin_ages,
        probs @ class_masks(bin_ages, 18, 60).T,
        shift.male_probs(d["cydral_male"][idx]),
    )


def faceapi_calibration(knots, spread, threshold):
    from edge.pipeline.classify import RegressionCalibration

    return RegressionCalibration(
        age_knots=((0.0, 0.0), (knots[0], 18.0), (knots[1], 60.0), (80.0, 80.0)),
        age_spread=spread,
        male_threshold=threshold,
    )


def faceapi_predict(d, idx, knots, spread, threshold):
    cal = faceapi_calibration(knots, spread, threshold)
    ages = cal.ages(d["faceapi_age"][idx])
    return ages, cal.class_probs(ages, 18, 60), cal.male_probs(d["faceapi_male"][idx])


def truth_class(ages):
    return np.where(ages < 18, 0, np.where(ages >= 60, 2, 1))


def scores(d, idx, pred) -> dict:
    """edge eval's metrics on rows idx (misses count as wrong)."""
    ages, class_probs, male = pred
    found = d["found"][idx]
    true_age, is_male = d["age"][idx], d["male"][idx]
    tc = truth_class(true_age)
    cls = np.where(found, np.nan_to_num(class_probs, nan=0).argmax(1), -1)
    gender_ok = found & ((np.nan_to_num(male, nan=0.5) >= 0.5) == is_male)
    teen = true_age >= 13
    recall = [float(np.mean(cls[tc == k] == k)) for k in range(3)]
    return {
        "gender13": float(np.mean(gender_ok[teen])),
        "class": float(np.mean(cls == tc)),
        "balanced": float(np.mean(recall)),
        "child": recall[0],
        "adult": recall[1],
        "old": recall[2],
        "mae": float(np.mean(np.abs(ages[found] - true_age[found]))),
    }


# --- fits ----------------------------------------------------------------------------------


def fit_knots(raw_class_fn, d, idx):
    """Boundary knots maximising balanced class accuracy (ties: nearest the identity)."""
    tc = truth_class(d["age"][idx])
    found = d["found"][idx]
    best = None
    for c, o in itertools.product(CHILD_GRID, OLD_GRID):
        if c >= o:
            continue
        cls = raw_class_fn(c, o)
        recall = np.mean([np.mean((cls == k)[tc == k] & found[tc == k]) for k in range(3)])
        key = (round(recall, 6), -abs(c - 18) - abs(o - 60))
        if best is None or key > best[0]:
            best = (key, (float(c), float(o)))
    return best[1]


def fit_threshold(male_raw, d, idx):
    teen = (d["age"][idx] >= 13) & d["found"][idx]
    is_male = d["male"][idx][teen]
    p = male_raw[teen]
    return float(
        max(
            ((np.mean(p[is_male] >= t) + np.mean(p[~is_male] < t)) / 2, -abs(t - 0.5), t)
            for t in GENDER_GRID
        )[2]
    )


def fit_cydral(d, idx, gender=True):
    from edge.pipeline.classify import AGE_BINS

    probs = d["cydral_age_probs"][idx]
    cum = np.nan_to_num(probs, nan=0)

    def classes(c, o):
        return np.stack(
            [
                cum[:, AGE_BINS < c].sum(1),
                cum[:, (AGE_BINS >= c) & (AGE_BINS < o)].sum(1),
                cum[:, AGE_BINS >= o].sum(1),
            ],
            1,
        ).argmax(1)

    knots = fit_knots(classes, d, idx)
    t = fit_threshold(d["cydral_male"][idx], d, idx) if gender else 0.5
    return knots, t


def fit_faceapi(d, idx, gender=True):
    raw = np.nan_to_num(d["faceapi_age"][idx], nan=-1)
    knots = fit_knots(lambda c, o: np.where(raw < c, 0, np.where(raw >= o, 2, 1)), d, idx)
    found = d["found"][idx]
    tc = truth_class(d["age"][idx])[found]

    def log_loss(spread):
        _, probs, _ = faceapi_predict(d, idx[found], knots, spread, 0.5)
        return -np.mean(np.log(np.clip(probs[np.arange(len(tc)), tc], 1e-6, 1)))

    spread = float(min(SPREAD_GRID, key=log_loss))
    # No gender threshold: fitted per fold it came out 0.68 and 0.51 (docs/calibration.md
    # section 8), a sign of noise, not of a bias worth correcting. `--faceapi-threshold`
    # shows what fitting one would do.
    t = fit_threshold(d["faceapi_male"][idx], d, idx) if gender and FIT_FACEAPI_THRESHOLD else 0.5
    return knots, spread, t


def ensemble_predict(d, idx, parts, weights, gender_weights=None):
    """Weighted means of the members' ages and class probabilities, and of their P(male)
    on the log-odds scale, as classify.Ensemble combines them."""
    from edge.pipeline.classify import _log_odds

    w = np.asarray(weights, float) / np.sum(weights)
    gw = w if gender_weights is None else np.asarray(gender_weights, float) / np.sum(gender_weights)
    ages, probs = (sum(wi * p[k] for wi, p in zip(w, parts, strict=False)) for k in (0, 1))
    log_odds = sum(
        wi * _log_odds(np.nan_to_num(p[2], nan=0.5)) for wi, p in zip(gw, parts, strict=False)
    )
    return ages, probs, 1 / (1 + np.exp(-log_odds))


def member_parts(d, idx, fits):
    """The members' predictions as an ensemble pools them: Cydral's log-odds unshifted."""
    (fa_knots, fa_spread, fa_t), (cy_knots, _) = fits
    return [
        faceapi_predict(d, idx, fa_knots, fa_spread, fa_t),
        cydral_predict(d, idx, cy_knots, 0.5),
    ]


def fit_ensemble(d, idx, w, fits):
    """Knots and spread on the weighted mean of the calibrated members' ages."""
    ages = ensemble_predict(d, idx, member_parts(d, idx, fits), [w, 1 - w])[0]
    raw = np.nan_to_num(ages, nan=-1)
    knots = fit_knots(lambda c, o: np.where(raw < c, 0, np.where(raw >= o, 2, 1)), d, idx)
    found = d["found"][idx]
    tc = truth_class(d["age"][idx])[found]

    def log_loss(spread):
        cal = faceapi_calibration(knots, spread, 0.5)
        probs = cal.class_probs(cal.ages(ages[found]), 18, 60)
        return -np.mean(np.log(np.clip(probs[np.arange(len(tc)), tc], 1e-6, 1)))

    return knots, float(min(SPREAD_GRID, key=log_loss))


def ensemble_whole_predict(d, idx, w, fits, knots, spread, gw=None):
    ages, _, male = ensemble_predict(
        d, idx, member_parts(d, idx, fits), [w, 1 - w], None if gw is None else [gw, 1 - gw]
    )
    cal = faceapi_calibration(knots, spread, 0.5)
    ages = cal.ages(ages)
    return ages, cal.class_probs(ages, 18, 60), male


# --- gender pooling ------------------------------------------------------------------------

POOL_GRID = (0.3, 0.4, 0.5, 0.55, 0.6, 0.7)  # faceapi's share of the pooled log-odds


def member_logits(d) -> dict[str, np.ndarray]:
    """Each member's raw log-odds of male, as classify.Ensemble clips them."""
    from edge.classify import _log_odds

    return {
        name: _log_odds(np.nan_to_num(d[f"{name}_male"], nan=0.5)) for name in ("faceapi", "cydral")
    }


def fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic regression by log loss: one coefficient per column of x, then the bias."""
    from scipy.optimize import minimize

    design = np.column_stack([x, np.ones(len(x))])

    def loss(theta):
        z = design @ theta
        return np.mean(np.logaddexp(0, z) - y * z)

    return minimize(loss, np.r_[np.ones(design.shape[1] - 1), 0.0], method="BFGS").x


def gender_fit_rows(d, idx):
    """Rows of idx a gender fit may use: a face was found and the person is 13 or older."""
    return idx[d["found"][idx] & (d["age"][idx] >= 13)]


def platt(d, logits, idx):
    """(a, b) of a * logit + b for one member, fitted on idx."""
    rows = gender_fit_rows(d, idx)
    return fit_logistic(logits[rows][:, None], d["male"][rows].astype(float))


def pooling_systems():
    """name -> function(d, logits, train, test) -> pooled log-odds on test."""
    from edge.classify import CYDRAL_MALE_THRESHOLD

    shift = np.log(CYDRAL_MALE_THRESHOLD / (1 - CYDRAL_MALE_THRESHOLD))

    def raw(w, cydral_shift=0.0):
        return lambda d, lo, train, test: (
            w * lo["faceapi"][test] + (1 - w) * (lo["cydral"][test] - cydral_shift)
        )

    def calibrated(w):
        def run(d, lo, train, test):
            (a1, b1), (a2, b2) = platt(d, lo["faceapi"], train), platt(d, lo["cydral"], train)
            return w * (a1 * lo["faceapi"][test] + b1) + (1 - w) * (a2 * lo["cydral"][test] + b2)

        return run

    def stacked(d, lo, train, test):
        rows = gender_fit_rows(d, train)
        w1, w2, b = fit_logistic(
            np.column_stack([lo["faceapi"][rows], lo["cydral"][rows]]),
            d["male"][rows].astype(float),
        )
        return w1 * lo["faceapi"][test] + w2 * lo["cydral"][test] + b

    out = {f"raw log-odds, faceapi {w:g}": raw(w) for w in POOL_GRID}
    out["raw log-odds, faceapi 0.55, Cydral threshold 0.36 in the pool (previous default)"] = raw(
        0.55, shift
    )
    out.update({f"Platt-calibrated log-odds, faceapi {w:g}": calibrated(w) for w in POOL_GRID})
    out["Platt-calibrated, weights fitted (stacking)"] = stacked
    return out


def gender_scores(d, z) -> tuple[float, float]:
    """(gender 13+ accuracy as edge eval scores it, log loss on found faces 13+)."""
    teen = d["age"] >= 13
    y = d["male"]
    ok = d["found"] & ((z >= 0) == y)
    rows = teen & d["found"]
    p = 1 / (1 + np.exp(-z[rows]))
    loss = -np.mean(np.where(y[rows], np.log(p + 1e-12), np.log(1 - p + 1e-12)))
    return float(np.mean(ok[teen])), float(loss)


def gender_pooling_report(d, folds) -> None:
    lo = member_logits(d)
    every = np.arange(len(d["age"]))
    print(
        "gender pooling, two-fold cross-validated (out-of-fold):\n"
        "| pooling | gender 13+ | log loss |\n| --- | --- | --- |"
    )
    for name, fn in pooling_systems().items():
        z = np.zeros(len(every))
        for k in (0, 1):
            train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            z[test] = fn(d, lo, train, test)
        accuracy, loss = gender_scores(d, z)
        print(f"| {name} | {accuracy:.4f} | {loss:.3f} |")
    print()
    for name in ("faceapi", "cydral"):
        fits = [
            platt(d, lo[name], idx)
            for idx in (every, np.flatnonzero(folds != 0), np.flatnonzero(folds != 1))
        ]
        (a, b), (a0, b0), (a1, b1) = fits
        print(
            f"{name}: Platt a, b on all faces {a:.2f}, {b:+.2f}; "
            f"folds {a0:.2f}, {b0:+.2f} and {a1:.2f}, {b1:+.2f}"
        )
    rows = gender_fit_rows(d, every)
    w1, w2, bias = fit_logistic(
        np.column_stack([lo["faceapi"][rows], lo["cydral"][rows]]), d["male"][rows].astype(float)
    )
    print(f"stacking, all faces: faceapi {w1:.2f}, cydral {w2:.2f}, bias {bias:+.2f}")
    pooled = 1 / (1 + np.exp(-(0.5 * lo["faceapi"] + 0.5 * lo["cydral"])))
    print(
        "threshold on the default pool (raw, equal): all faces "
        f"{fit_threshold(pooled, d, every):.2f}; folds "
        f"{fit_threshold(pooled[folds != 0], d, np.flatnonzero(folds != 0)):.2f} and "
        f"{fit_threshold(pooled[folds != 1], d, np.flatnonzero(folds != 1)):.2f}"
    )


# --- report ------------------------------------------------------------------------------


def systems(gender_fit: bool):
    """name -> function(d, train_idx, test_idx, calibrated) -> predictions on test_idx."""

    def cydral(d, train, test, cal):
        knots, t = fit_cydral(d, train, gender_fit) if cal else ((18, 60), 0.5)
        return cydral_predict(d, test, knots, t)

    def face_api(d, train, test, cal):
        knots, spread, t = fit_faceapi(d, train, gender_fit) if cal else ((18, 60), 0.15, 0.5)
        if not cal:  # raw: the default spread, no knots
            return faceapi_predict(d, test, (18, 60), 0.15, 0.5)
        return faceapi_predict(d, test, knots, spread, t)

    def cydral_member(d, train, test, cal):
        knots = fit_cydral(d, train, False)[0] if cal else (18, 60)
        return cydral_predict(d, test, knots, 0.5)

    def ensemble(w, gw=None):
        def run(d, train, test, cal):
            return ensemble_predict(
                d,
                test,
                [face_api(d, train, test, cal), cydral_member(d, train, test, cal)],
                [w, 1 - w],
                None if gw is None else [gw, 1 - gw],
            )

        return run

    def ensemble_whole(w, gw=None):
        def run(d, train, test, cal):
            if not cal:
                return ensemble(w, gw)(d, train, test, cal)
            fits = (fit_faceapi(d, train, gender_fit), fit_cydral(d, train, gender_fit))
            knots, spread = fit_ensemble(d, train, w, fits)
            return ensemble_whole_predict(d, test, w, fits, knots, spread, gw)

        return run

    out = {"cydral": cydral, "faceapi": face_api}
    for w in WEIGHT_GRID:
        out[f"ensemble faceapi {w:g} + cydral {1 - w:g}, members' mean"] = ensemble(w)
    for w in WEIGHT_GRID:
        out[f"ensemble faceapi {w:g} + cydral {1 - w:g}, as a whole"] = ensemble_whole(w)
    out["**default**: as a whole, age 0.7 + 0.3, gender 0.5 + 0.5"] = ensemble_whole(0.7, 0.5)
    return out


def cross_validated(d, fn, folds):
    n = len(d["age"])
    ages, probs, male = np.zeros(n), np.zeros((n, 3)), np.zeros(n)
    for k in (0, 1):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        a, p, m = fn(d, train, test, True)
        ages[test], probs[test], male[test] = a, p, m
    return ages, probs, male


def line(name, s):
    return (
        f"| {name} | {s['gender13']:.3f} | {s['class']:.3f} | {s['balanced']:.3f} | "
        f"{s['child']:.3f} | {s['adult']:.3f} | {s['old']:.3f} | {s['mae']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels")
    parser.add_argument(
        "--cache", type=Path, help="raw outputs (.npz): read if present, else written"
    )
    parser.add_argument(
        "--no-gender-threshold",
        action="store_true",
        help="fit no gender threshold (0.5 for every backend)",
    )
    parser.add_argument(
        "--faceapi-threshold", action="store_true", help="also fit a gender threshold for faceapi"
    )
    args = parser.parse_args()
    global FIT_FACEAPI_THRESHOLD
    FIT_FACEAPI_THRESHOLD = args.faceapi_threshold
    d = raw_outputs(Path(args.labels), args.cache)
    n = len(d["age"])
    every = np.arange(n)
    folds = np.random.default_rng(0).permutation(n) % 2
    print(f"{n} faces, {int((~d['found']).sum())} missed by the detector\n")
    header = (
        "| system | gender 13+ | age class | balanced | child | adult | old | MAE |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for title, mode in (
        ("raw networks (no calibration)", "raw"),
        ("calibrated on all faces (in-sample)", "in"),
        ("two-fold cross-validated (out-of-fold)", "cv"),
    ):
        print(f"{title}:\n{header}")
        for name, fn in systems(not args.no_gender_threshold).items():
            if mode == "raw":
                pred = fn(d, every, every, False)
            elif mode == "in":
                pred = fn(d, every, every, True)
            else:
                pred = cross_validated(d, fn, folds)
            print(line(name, scores(d, every, pred)))
        print()
    knots, t = fit_cydral(d, every, not args.no_gender_threshold)
    print(
        f"cydral, all faces: AGE_CALIBRATION knots [0, 0], [{knots[0]:g}, 18], "
        f"[{knots[1]:g}, 60], [80, 80]; gender threshold {t:.2f}"
    )
    for k in (0, 1):
        print(
            f"  fold {k}: {fit_cydral(d, np.flatnonzero(folds != k), not args.no_gender_threshold)}"
        )
    knots, spread, t = fit_faceapi(d, every, not args.no_gender_threshold)
    print(
        f"faceapi, all faces: FACEAPI_CALIBRATION age_knots ((0, 0), ({knots[0]:g}, 18), "
        f"({knots[1]:g}, 60), (80, 80)), age_spread {spread:.2f}, male_threshold {t:.2f}"
    )
    for k in (0, 1):
        fit = fit_faceapi(d, np.flatnonzero(folds != k), not args.no_gender_threshold)
        print(f"  fold {k}: {fit}")
    fits = (
        fit_faceapi(d, every, not args.no_gender_threshold),
        fit_cydral(d, every, not args.no_gender_threshold),
    )
    for w in WEIGHT_GRID:
        knots, spread = fit_ensemble(d, every, w, fits)
        print(
            f"ensemble faceapi {w:g} + cydral {1 - w:g}, all faces: age_knots ((0, 0), "
            f"({knots[0]:g}, 18), ({knots[1]:g}, 60), (80, 80)), age_spread {spread:.2f}"
        )
    print()
    gender_pooling_report(d, folds)


if __name__ == "__main__":
    main()
