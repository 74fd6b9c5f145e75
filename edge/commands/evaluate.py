"""Accuracy on a labelled face set (`edge eval LABELS.csv`), and how evenly it holds.

CSV columns `file,age,gender`, paths relative to the CSV; any other column (FairFace's
`age_group`, `race`, `split`) may select rows (`--where`, `--exclude`), split the
metrics by its values (`--by`) or be balanced (`--balance-by`). Faces are found as the
photo API finds them (analyze.find_many: the photo, then, when it shows none, the
photo with a border, since crops may be tight); the largest face is scored and an
image without a face counts as a miss (wrong on every metric).

Balancing weighs every cell of the named columns (say age group x gender) the same:
the audience in front of a screen is not the data set's mix, and a metric dominated by
the biggest cells hides the worst ones. Columns used to split or balance only measure;
they are never an input of the product (race above all).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import InputError
from edge.pipeline.analyze import find_many, pad, read_image
from edge.records import AGE_CLASSES, GENDERS


@dataclass(frozen=True)
class Label:
    path: Path
    age: float
    gender: str
    columns: dict[str, str] = field(default_factory=dict)  # the CSV's other columns

    def value(self, column: str) -> str:
        if column == "gender":
            return self.gender
        return self.columns[column]


def read_labels(csv_path: Path) -> list[Label]:
    csv_path = Path(csv_path)
    try:
        handle = open(csv_path, newline="")
    except OSError as exc:
        raise InputError(f"{csv_path}: cannot read: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = {"file", "age", "gender"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                f"expected header file,age,gender"
            )
        labels = []
        for line, row in enumerate(reader, start=2):
            try:
                age = float(row["age"])
            except (TypeError, ValueError):
                raise InputError(f"{csv_path}:{line}: age {row['age']!r} is not a number") from None
            gender = (row["gender"] or "").strip().lower()
            if gender not in GENDERS:
                raise InputError(
                    f"{csv_path}:{line}: gender {row['gender']!r} is not female or male"
                )
            extra = {k: (v or "").strip() for k, v in row.items() if k not in _CORE and k}
            labels.append(Label(csv_path.parent / row["file"], age, gender, extra))
    if not labels:
        raise InputError(f"{csv_path}: no rows")
    return labels


_CORE = ("file", "age", "gender")


def parse_selector(text: str, option: str) -> tuple[str, set[str]]:
    """`COLUMN=VALUE[,VALUE...]` of --where / --exclude."""
    column, sep, values = text.partition("=")
    if not sep or not column.strip() or not values.strip():
        raise InputError(f"{option} {text!r}: expected COLUMN=VALUE[,VALUE...]")
    return column.strip(), {v.strip() for v in values.split(",")}


def select(
    labels: list[Label],
    csv_path: Path,
    where: Sequence[tuple[str, set[str]]] = (),
    exclude: Sequence[tuple[str, set[str]]] = (),
) -> list[Label]:
    """The rows whose columns match every --where and no --exclude."""
    for column, _ in (*where, *exclude):
        check_column(labels, column, csv_path)
    kept = [
        label
        for label in labels
        if all(label.value(c) in vs for c, vs in where)
        and not any(label.value(c) in vs for c, vs in exclude)
    ]
    if not kept:
        raise InputError(f"{csv_path}: no rows left after --where/--exclude")
    return kept


def check_column(labels: list[Label], column: str, csv_path: Path) -> None:
    if column != "gender" and column not in labels[0].columns:
        known = ", ".join(["gender", *labels[0].columns])
        raise InputError(f"{csv_path}: no column {column!r} (columns: {known})")


def load_padded(path: Path) -> np.ndarray:
    return pad(read_image(path))


def age_class(age: float, child_below: float, old_from: float) -> int:
    return 0 if age < child_below else 2 if age >= old_from else 1


def score(
    labels: list[Label],
    predictions: list[dict | None],
    child_below: float,
    old_from: float,
    weights: np.ndarray | None = None,
) -> dict:
    """Metrics from per-image predictions ({'age', 'class', 'male_prob'} or None = miss).

    `weights` (one per image; default all 1) weigh every ratio and the age error; the
    confusion matrix stays a count of images.
    """
    n = len(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    confusion = np.zeros((3, 3), int)
    gender_ok = np.zeros(n, bool)
    class_ok = np.zeros(n, bool)
    found = np.array([p is not None for p in predictions], bool)
    error = np.zeros(n)
    truth_class = np.array([age_class(label.age, child_below, old_from) for label in labels])
    for i, (label, pred) in enumerate(zip(labels, predictions, strict=False)):
        if pred is None:
            continue
        gender_ok[i] = GENDERS[int(pred["male_prob"] >= 0.5)] == label.gender
        class_ok[i] = pred["class"] == truth_class[i]
        confusion[truth_class[i], pred["class"]] += 1
        error[i] = abs(pred["age"] - label.age)
    teen_up = np.array([label.age >= 13 for label in labels])

    def share(ok: np.ndarray, among: np.ndarray | None = None) -> float | None:
        mask = np.ones(n, bool) if among is None else among
        return _ratio((w * ok)[mask].sum(), w[mask].sum())

    result = {
        "n": n,
        "misses": int(n - found.sum()),
        "miss_rate": share(~found),
        "gender_accuracy": share(gender_ok),
        "gender_accuracy_13plus": share(gender_ok, teen_up),
        "age_mae": round(float((w * error)[found].sum() / w[found].sum()), 3)
        if found.any()
        else None,
        "age_class_accuracy": share(class_ok),
        "confusion": confusion.tolist(),
        "confusion_rows": "true child, adult, old; columns predicted (misses not counted)",
        "recall": {c: share(class_ok, truth_class == k) for k, c in enumerate(AGE_CLASSES)},
        "gender_accuracy_by_class": {
            c: share(gender_ok, truth_class == k) for k, c in enumerate(AGE_CLASSES)
        },
        "class_boundaries": {"child_below": child_below, "old_from": old_from},
    }
    return result


# The metrics compared between groups (--by) and cells (--balance-by): one number each.
GROUP_METRICS = {
    "gender_accuracy_13plus": lambda m: m["gender_accuracy_13plus"],
    "age_class_accuracy": lambda m: m["age_class_accuracy"],
    "child_recall": lambda m: m["recall"]["child"],
    "old_recall": lambda m: m["recall"]["old"],
    "age_mae": lambda m: m["age_mae"],
    "miss_rate": lambda m: m["miss_rate"],
}
_LOWER_IS_BETTER = {"age_mae", "miss_rate"}


# Rounds of the permutation behind `chance`; its seed is fixed so a report is repeatable.
CHANCE_ROUNDS = 200
CHANCE_SEED = 20261206


def balance_weights(labels: list[Label], columns: Sequence[str]) -> np.ndarray:
    """One weight per image so that every cell of `columns` weighs the same in total."""
    keys = [tuple(label.value(c) for c in columns) for label in labels]
    counts: dict[tuple, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return np.array([len(labels) / (len(counts) * counts[key]) for key in keys])


def fairness(
    labels: list[Label],
    predictions: list[dict | None],
    child_below: float,
    old_from: float,
    *,
    by: Sequence[str] = (),
    balance_by: Sequence[str] = (),
    chance_rounds: int = CHANCE_ROUNDS,
) -> dict:
    """The overall metrics (balanced when asked), then per value of each --by column
    with the spread between its best and worst group and how big that spread is by
    chance alone (`chance`), and the worst --balance-by cell."""
    weights = balance_weights(labels, balance_by) if balance_by else None
    result = score(labels, predictions, child_below, old_from, weights)
    if balance_by:
        result["balanced_by"] = list(balance_by)
        cells = _groups(labels, balance_by)
        result["cells"] = {
            name: _compact(score(*_take(labels, predictions, idx), child_below, old_from))
            for name, idx in cells.items()
        }
        result["worst_cell"] = _extremes(result["cells"])
    for column in by:
        groups = _groups(labels, [column])
        # within a group the column is one value: balance by the other columns (the same
        # weights as all of balance_by; for the shuffles of `chance` it matters)
        within = [c for c in balance_by if c != column]
        per_group = _per_group(labels, predictions, groups, child_below, old_from, within)
        spread = _extremes(per_group)
        result.setdefault("by", {})[column] = {"groups": per_group, "spread": spread}
        if chance_rounds:
            result["by"][column]["chance"] = _chance(
                labels,
                predictions,
                column,
                spread,
                child_below,
                old_from,
                within,
                chance_rounds,
            )
    return result


def _per_group(labels, predictions, groups, child_below, old_from, balance_by) -> dict:
    per_group = {}
    for name, idx in groups.items():
        # Balanced within the group (each of its cells weighs the same), so groups are
        # compared on one and the same audience mix (direct standardisation), not on
        # their own mixes of age and gender.
        sub_labels, sub_predictions = _take(labels, predictions, idx)
        sub_weights = balance_weights(sub_labels, balance_by) if balance_by else None
        per_group[name] = _compact(
            score(sub_labels, sub_predictions, child_below, old_from, sub_weights)
        )
    return per_group


def _chance(labels, predictions, column, spread, child_below, old_from, within, rounds) -> dict:
    """How big each metric's spread between the groups of `column` is when the column
    makes no difference at all: the same predictions, the column's values shuffled among
    the faces of each cell of the other --balance-by columns (every group keeps its size
    and, for a column not balanced, its mix of cells), the spread measured again,
    `rounds` times. A group's figure over a handful of faces
    swings by chance (FairFace val has 2 to 10 faces of 70+ per race and gender, and
    balancing gives each such cell the weight of a big one), so a spread means little
    until it stands out from these: `p` is the share of shuffles whose spread is at
    least the measured one (small: the gap is real), `median` and `p90` what chance
    gives."""
    rng = np.random.default_rng(CHANCE_SEED)
    values = np.array([label.value(column) for label in labels], dtype=object)
    # `within`: the other balance columns (`--by age_group` with `--balance-by
    # age_group,gender`: gender)
    strata = list(_groups(labels, within).values()) if within else [np.arange(len(labels))]
    shuffled: dict[str, list[float]] = {name: [] for name in spread}
    for _ in range(rounds):
        permuted = values.copy()
        for idx in strata:
            permuted[idx] = values[rng.permutation(idx)]
        groups: dict[str, list[int]] = {}
        for i, value in enumerate(permuted):
            groups.setdefault(value, []).append(i)
        per_group = _per_group(
            labels,
            predictions,
            {k: np.array(v) for k, v in sorted(groups.items())},
            child_below,
            old_from,
            within,
        )
        for name, s in _extremes(per_group).items():
            if name in shuffled:
                shuffled[name].append(s["spread"])
    out: dict = {"rounds": rounds, "seed": CHANCE_SEED}
    for name, null in shuffled.items():
        if not null:
            continue
        null_a = np.array(null)
        out[name] = {
            "median": round(float(np.median(null_a)), 4),
            "p90": round(float(np.quantile(null_a, 0.9)), 4),
            "p": round(float(np.mean(null_a >= spread[name]["spread"])), 3),
        }
    return out


def _groups(labels: list[Label], columns: Sequence[str]) -> dict[str, np.ndarray]:
    names: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        names.setdefault(" / ".join(label.value(c) for c in columns), []).append(i)
    return {name: np.array(idx) for name, idx in sorted(names.items())}


def _take(labels, predictions, idx: np.ndarray) -> tuple[list[Label], list[dict | None]]:
    return [labels[i] for i in idx], [predictions[i] for i in idx]


def _compact(metrics: dict) -> dict:
    out: dict = {"n": metrics["n"]}
    out.update({name: get(metrics) for name, get in GROUP_METRICS.items()})
    return out


def _extremes(groups: dict[str, dict]) -> dict:
    """Per metric: the worst and the best group and the gap between them."""
    spread = {}
    for name in GROUP_METRICS:
        scored = [(g[name], key) for key, g in groups.items() if g[name] is not None]
        if not scored:
            continue
        low, high = min(scored), max(scored)
        worst, best = (high, low) if name in _LOWER_IS_BETTER else (low, high)
        spread[name] = {
            "worst": worst[1],
            "worst_value": worst[0],
            "best": best[1],
            "best_value": best[0],
            "spread": round(abs(high[0] - low[0]), 4),
        }
    return spread


def predict(analyzer, labels: list[Label], progress: bool = True) -> list[dict | None]:
    from tqdm import tqdm

    predictions: list[dict | None] = []
    for label in tqdm(labels, desc="eval", unit="img", disable=not progress, file=sys.stderr):
        (frame,), (faces,), _ = find_many(analyzer.detector, [read_image(label.path)])
        if len(faces) == 0:
            predictions.append(None)
            continue
        best = faces[int(np.argmax(faces.areas))]
        demo = analyzer.classifier(frame, best)
        predictions.append(
            {
                "age": float(demo.ages[0]),
                "class": int(demo.class_probs[0].argmax()),
                "male_prob": float(demo.male_probs[0]),
            }
        )
    return predictions


def _ratio(num, den) -> float | None:
    return round(float(num) / float(den), 4) if den else None
