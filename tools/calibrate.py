"""Fit the age and gender calibration in edge/classify.py on a labelled set.

  .venv/bin/python tools/calibrate.py LABELS.csv

What is fitted (three numbers, nothing per image):
- age: a monotone piecewise-linear map from the network's age scale to years,
  with knots at the two class boundaries: the model ages that best separate
  true <18 and >=60 (the network under-estimates older faces). Chosen to
  maximise balanced accuracy (mean per-class recall), so the result does not
  depend on how many children or old people the set holds;
- gender: a shift of the male/female decision point, also by balanced accuracy
  (mean of female and male accuracy, ages 13+).

It reports two-fold cross-validation (fit on one half, score the other) beside
the in-sample figures, so we know what the fit is worth on faces it never saw.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD_GRID = np.arange(12.0, 26.01, 0.5)
OLD_GRID = np.arange(40.0, 66.01, 0.5)
GENDER_GRID = np.arange(0.30, 0.701, 0.01)


def raw_outputs(labels_csv: Path):
    from edge import config as config_mod
    from edge.align import face_chips
    from edge.analyze import FaceAnalyzer
    from edge.evaluate import load_padded, read_labels
    from tqdm import tqdm

    cfg = config_mod.Config()
    cfg.classifier.calibrated = False
    analyzer = FaceAnalyzer(cfg)
    clf = analyzer.classifier
    labels, ages, males = [], [], []
    for label in tqdm(read_labels(labels_csv), desc="raw outputs", file=sys.stderr):
        frame = load_padded(label.path)
        faces = analyzer.detector(frame)
        if len(faces) == 0:
            continue  # misses are not informative for calibration
        best = faces[int(np.argmax(faces.areas))]
        ages.append(clf._run(clf._age, face_chips(frame, best.landmarks, clf.AGE_SIZE))[0])
        males.append(clf._run(clf._gender, face_chips(frame, best.landmarks, clf.GENDER_SIZE))[0, 1])
        labels.append(label)
    return labels, np.array(ages), np.array(males)


def age_class_probs(age_probs, child_m, old_m):
    from edge.classify import AGE_BINS

    return np.stack([age_probs[:, AGE_BINS < child_m].sum(1),
                     age_probs[:, (AGE_BINS >= child_m) & (AGE_BINS < old_m)].sum(1),
                     age_probs[:, AGE_BINS >= old_m].sum(1)], 1)


def balanced_class_accuracy(age_probs, truth, child_m, old_m):
    pred = age_class_probs(age_probs, child_m, old_m).argmax(1)
    return np.mean([np.mean(pred[truth == k] == k) for k in range(3)])


def fit_age(age_probs, truth):
    best = max(((balanced_class_accuracy(age_probs, truth, c, o), -abs(c - 18) - abs(o - 60), c, o)
                for c in CHILD_GRID for o in OLD_GRID if c < o))
    return best[2], best[3]


def balanced_gender_accuracy(male_probs, is_male, threshold):
    pred = male_probs >= threshold
    return (np.mean(pred[is_male]) + np.mean(~pred[~is_male])) / 2


def fit_gender(male_probs, is_male):
    return max((balanced_gender_accuracy(male_probs, is_male, t), -abs(t - 0.5), t)
               for t in GENDER_GRID)[2]


def main(labels_csv: str) -> None:
    labels, age_probs, male_probs = raw_outputs(Path(labels_csv))
    true_age = np.array([l.age for l in labels])
    truth = np.where(true_age < 18, 0, np.where(true_age >= 60, 2, 1))
    is_male = np.array([l.gender == "male" for l in labels])
    teen = true_age >= 13
    print(f"{len(labels)} detected faces")
    print("raw model:       age classes (balanced) %.4f   gender 13+ (balanced) %.4f" % (
        balanced_class_accuracy(age_probs, truth, 18, 60),
        balanced_gender_accuracy(male_probs[teen], is_male[teen], 0.5)))
    rng = np.random.default_rng(0)
    folds = rng.permutation(len(labels)) % 2
    for k in (0, 1):
        fit, test = folds != k, folds == k
        c, o = fit_age(age_probs[fit], truth[fit])
        t = fit_gender(male_probs[fit & teen], is_male[fit & teen])
        print(f"fold {k}: fitted child<{c:g} old>={o:g} gender threshold {t:.2f}; held-out half: "
              f"age classes {balanced_class_accuracy(age_probs[test], truth[test], c, o):.4f}, "
              f"gender 13+ {balanced_gender_accuracy(male_probs[test & teen], is_male[test & teen], t):.4f}")
    c, o = fit_age(age_probs, truth)
    t = fit_gender(male_probs[teen], is_male[teen])
    print(f"all faces: child<{c:g} old>={o:g} gender threshold {t:.2f}; in-sample: "
          f"age classes {balanced_class_accuracy(age_probs, truth, c, o):.4f}, "
          f"gender 13+ {balanced_gender_accuracy(male_probs[teen], is_male[teen], t):.4f}")
    print("\nfor edge/classify.py:")
    print(f"AGE_CALIBRATION knots: [0, 0], [{c:g}, 18], [{o:g}, 60], [80, 80]")
    print(f"gender threshold {t:.2f}: apply only if both folds agree on it and it helps "
          f"the held-out halves (on utkface-dev they did not, so none is applied)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
