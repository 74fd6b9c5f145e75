"""Fine-tune face-api's age/gender network on FairFace's train split, choose on val, export ONNX.

  make train-env                                   # .venv-train: the runtime + PyTorch 2.13 CPU
  .venv-train/bin/python tools/train_classifier.py check
  .venv-train/bin/python tools/train_classifier.py faces [--limit N]
  .venv-train/bin/python tools/train_classifier.py train --out models/faceapi-fairface.onnx

A development tool only: the service runs the exported ONNX on ONNX Runtime and never
imports PyTorch, trains or downloads.

- `check`: our PyTorch port of AgeGenderNet (built straight from face-api's TF.js
  weights, as edge/inference/faceapi.py builds the ONNX graph) gives the pinned ONNX
  model's outputs on random chips; prints the largest difference.
- `faces`: the face the service would find in each FairFace photo: the photo padded as
  `edge eval` pads it, CenterFace (the default detector), the largest face. Written to
  the training's data list, models/training/fairface-faces.csv.gz (every photo with a
  face: its box and five landmarks to 0.01 px), which the training reads; the detector
  run is cached outside the repository (--cache, default ~/.cache/edge-train). The list
  is committed because ONNX Runtime's detector answers differently in the last bits on
  another CPU (up to 8e-5 px between an AVX-512 Xeon and an SSE4.2 one), which moves
  the odd pixel of a chip and so the whole training. Each run cuts the 112x112 chips
  from the list as the service does (classify.faceapi_chips with config.yaml's settings
  and --turned-yaw: the eye-line crop, or the box crop for a turned head, and the
  exposure floor), in memory.
  Photos without a face are kept as misses: training skips them, selection counts them.
- `train`: the chips of split `train`, every age group x gender cell drawn equally often
  (old faces are rare in FairFace, and the audience in front of a screen is not its mix),
  horizontal flips and small shifts, scale and brightness changes; the first blocks stay
  frozen (--train-from), the rest learn with AdamW. Gender: cross-entropy on the
  network's two logits. Age: FairFace gives a group, not an age, so the loss is zero
  inside the group's bounds and grows (smooth L1) outside them. After each epoch the
  model is scored on split `val` (balanced by age group x gender, flip TTA as the service
  runs it) and the best epoch is exported, deterministic, with the input and output
  names the service expects (FaceApiAgeGender loads it unchanged). Fixed seed; single
  process; torch's deterministic algorithms; kernels pinned to code every x86-64 CPU
  runs alike (tools/reproducible.py): the same command gives the same bytes on any CPU.
  `--numerics native` trades that for the CPU's fastest kernels (quick experiments).

Race is read by nothing here: cells are age group x gender only.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # onnx_torch, reproducible
sys.path.insert(0, str(ROOT))

from reproducible import numerics_report, pin_numerics  # noqa: E402

FAIRFACE = ROOT.parent / "shared" / "faces" / "fairface" / "labels.csv"
CACHE = Path.home() / ".cache" / "edge-train"
FACES = ROOT / "models" / "training" / "fairface-faces.csv.gz"
SEED = 20261206
# FairFace's groups as (low, high) ages: the loss is zero for an age inside them.
AGE_GROUPS = {
    "0-2": (0, 2.99),
    "3-9": (3, 9.99),
    "10-19": (10, 19.99),
    "20-29": (20, 29.99),
    "30-39": (30, 39.99),
    "40-49": (40, 49.99),
    "50-59": (50, 59.99),
    "60-69": (60, 69.99),
    "70+": (70, 90),
}
# AgeGenderNet's blocks in forward order; --train-from names the first that learns.
BLOCKS = (
    "entry_flow/conv_in",
    "entry_flow/reduction_block_0",
    "entry_flow/reduction_block_1",
    "middle_flow/main_block_0",
    "middle_flow/main_block_1",
    "exit_flow/reduction_block",
    "exit_flow/separable_conv",
    "fc",
)


# --- the network in PyTorch -------------------------------------------------------------


def build_torch(weights: dict[str, np.ndarray]):  # noqa: C901 (the network, layer by layer)
    """AgeGenderNet as a torch.nn.Module whose parameters are face-api's (dequantised)
    weights, laid out exactly as edge/inference/faceapi.py lays out the ONNX graph."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edge.inference import faceapi

    def same(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
        return faceapi.same_pads(size, kernel, stride)

    class Conv(nn.Module):
        def __init__(self, prefix: str, stride: int):
            super().__init__()
            self.prefix = prefix
            filters = weights[f"{prefix}/filters"]  # HWIO
            self.weight = nn.Parameter(torch.from_numpy(filters.transpose(3, 2, 0, 1).copy()))
            self.bias = nn.Parameter(torch.from_numpy(weights[f"{prefix}/bias"].copy()))
            self.stride, self.kernel = stride, filters.shape[0]

        def forward(self, x):
            before, after, _ = same(x.shape[-1], self.kernel, self.stride)
            x = F.pad(x, (before, after, before, after))
            return F.conv2d(x, self.weight, self.bias, stride=self.stride)

    class Separable(nn.Module):
        def __init__(self, prefix: str):
            super().__init__()
            self.prefix = prefix
            depthwise = weights[f"{prefix}/depthwise_filter"]  # (kh, kw, C, 1)
            pointwise = weights[f"{prefix}/pointwise_filter"]  # (1, 1, C, O)
            self.depthwise = nn.Parameter(torch.from_numpy(depthwise.transpose(2, 3, 0, 1).copy()))
            self.pointwise = nn.Parameter(torch.from_numpy(pointwise.transpose(3, 2, 0, 1).copy()))
            self.bias = nn.Parameter(torch.from_numpy(weights[f"{prefix}/bias"].copy()))
            self.kernel, self.channels = depthwise.shape[0], depthwise.shape[2]

        def forward(self, x):
            before, after, _ = same(x.shape[-1], self.kernel, 1)
            x = F.pad(x, (before, after, before, after))
            x = F.conv2d(x, self.depthwise, groups=self.channels)
            return F.conv2d(x, self.pointwise, self.bias)

    class Reduction(nn.Module):
        def __init__(self, prefix: str, activate_input: bool = True):
            super().__init__()
            self.activate_input = activate_input
            self.sep0 = Separable(f"{prefix}/separable_conv0")
            self.sep1 = Separable(f"{prefix}/separable_conv1")
            self.expansion = Conv(f"{prefix}/expansion_conv", 2)

        def forward(self, x):
            out = F.relu(x) if self.activate_input else x
            out = self.sep1(F.relu(self.sep0(out)))
            before, after, _ = same(out.shape[-1], 3, 2)
            # TensorFlow's 'same' max pooling ignores the padding: pad with -inf
            out = F.pad(out, (before, after, before, after), value=float("-inf"))
            out = F.max_pool2d(out, 3, 2)
            return out + self.expansion(x)

    class Main(nn.Module):
        def __init__(self, prefix: str):
            super().__init__()
            self.seps = nn.ModuleList(Separable(f"{prefix}/separable_conv{i}") for i in range(3))

        def forward(self, x):
            out = x
            for sep in self.seps:
                out = sep(F.relu(out))
            return out + x

    class Dense(nn.Module):
        def __init__(self, prefix: str):
            super().__init__()
            self.prefix = prefix
            self.weight = nn.Parameter(torch.from_numpy(weights[f"{prefix}/weights"].copy()))
            self.bias = nn.Parameter(torch.from_numpy(weights[f"{prefix}/bias"].copy()))

        def forward(self, x):
            return x @ self.weight + self.bias

    class AgeGenderNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer(
                "mean", torch.tensor(faceapi.MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1)
            )
            self.blocks = nn.ModuleDict(
                {
                    "entry_flow/conv_in": Conv("entry_flow/conv_in", 2),
                    "entry_flow/reduction_block_0": Reduction(
                        "entry_flow/reduction_block_0", activate_input=False
                    ),
                    "entry_flow/reduction_block_1": Reduction("entry_flow/reduction_block_1"),
                    **{
                        f"middle_flow/main_block_{i}": Main(f"middle_flow/main_block_{i}")
                        for i in range(faceapi.NUM_MAIN_BLOCKS)
                    },
                    "exit_flow/reduction_block": Reduction("exit_flow/reduction_block"),
                    "exit_flow/separable_conv": Separable("exit_flow/separable_conv"),
                }
            )
            self.fc_age = Dense("fc/age")
            self.fc_gender = Dense("fc/gender")

        def features(self, images):
            x = (images - self.mean) / 255.0
            x = F.relu(self.blocks["entry_flow/conv_in"](x))
            for name in BLOCKS[1:-2]:
                x = self.blocks[name](x)
            x = F.relu(self.blocks["exit_flow/separable_conv"](x))
            return F.avg_pool2d(x, 7, 2).flatten(1)

        def logits(self, images):
            """(age in years, the two gender logits [male, female])."""
            pooled = self.features(images)
            return self.fc_age(pooled).squeeze(1), self.fc_gender(pooled)

        def forward(self, images):
            age, gender = self.logits(images)
            return age, torch.softmax(gender, dim=1)

    return AgeGenderNet()


def load_base_weights() -> dict[str, np.ndarray]:
    from edge.inference import faceapi

    models = ROOT / "models"
    manifest = models / "age_gender_model-weights_manifest.json"
    weights_bin = models / "age_gender_model.bin"
    for path in (manifest, weights_bin):
        if not path.is_file():
            sys.exit(f"{path}: missing; run `make setup` (edge models fetch) first")
    return faceapi.read_weights(manifest.read_bytes(), weights_bin.read_bytes())


def cmd_check(args) -> int:
    """The PyTorch port against the ONNX model the service runs."""
    import onnxruntime as ort
    import torch

    net = build_torch(load_base_weights()).eval()
    rng = np.random.default_rng(SEED)
    chips = rng.uniform(0, 255, (8, 3, 112, 112)).astype(np.float32)
    session = ort.InferenceSession(
        str(ROOT / "models" / "faceapi-age-gender.onnx"), providers=["CPUExecutionProvider"]
    )
    want_age, want_gender = session.run(None, {"images": chips})
    with torch.no_grad():
        age, gender = net(torch.from_numpy(chips))
    diff_age = float(np.abs(age.numpy() - want_age).max())
    diff_gender = float(np.abs(gender.numpy() - want_gender).max())
    print(f"max |torch - onnx|: age {diff_age:.2e} years, P(male) {diff_gender:.2e}")
    # and back: the weights the export writes rebuild the same ONNX bytes
    from edge.inference import faceapi

    rebuilt = faceapi.build_onnx(tfjs_weights(net)).SerializeToString(deterministic=True)
    pinned = (ROOT / "models" / "faceapi-age-gender.onnx").read_bytes()
    print(f"export of the unchanged port: {'same bytes' if rebuilt == pinned else 'DIFFERENT'}")
    ok = diff_age < 1e-3 and diff_gender < 1e-5 and rebuilt == pinned
    print("OK" if ok else "FAIL: the port differs from the ONNX graph")
    same = optimiser_matches_torch()
    return 0 if ok and same else 1


def optimiser_matches_torch(steps: int = 60) -> bool:
    """Our IEEE-exact AdamW + one-cycle (reproducible.OneCycleAdamW) against torch's
    AdamW + OneCycleLR on one small network: the same recipe up to rounding."""
    import torch
    from reproducible import OneCycleAdamW

    torch.manual_seed(SEED)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    nets = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))]
    nets.append(copy.deepcopy(nets[0]))
    theirs = torch.optim.AdamW(nets[0].parameters(), lr=1e-2, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(theirs, 1e-2, total_steps=steps)
    ours = OneCycleAdamW(list(nets[1].parameters()), 1e-2, steps, 1e-4)
    for _ in range(steps):
        for net, opt in zip(nets, (theirs, ours), strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        schedule.step()
    pairs = zip(nets[0].parameters(), nets[1].parameters(), strict=True)
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    print(f"OneCycleAdamW vs torch's AdamW + OneCycleLR, {steps} steps: max |diff| {diff:.1e}")
    return diff < 1e-5


# --- chips --------------------------------------------------------------------------------


def detection_cache_path(labels_csv: Path, cache_dir: Path, limit: int | None) -> Path:
    """One file per labels file, detector code and limit: a change to any makes a new one."""
    from edge.pipeline import detect

    digest = hashlib.sha256(labels_csv.read_bytes())
    digest.update(Path(detect.__file__).read_bytes())
    digest.update(str(limit).encode())
    return cache_dir / f"fairface-faces-{digest.hexdigest()[:16]}.npz"


def read_rows(labels_csv: Path, limit: int | None) -> list[dict]:
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if limit:  # a spread-out subset (every k-th row), for trying the tool quickly
        step = max(1, len(rows) // limit)
        rows = rows[::step][:limit]
    return rows


def label_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """What the training reads of each labels.csv row (race is not among them)."""
    return {
        "paths": np.array([r["file"] for r in rows]),
        "split": np.array([r["split"] for r in rows]),
        "age_group": np.array([r["age_group"] for r in rows]),
        "male": np.array([r["gender"] == "male" for r in rows]),
        "age": np.array([float(r["age"]) for r in rows], np.float32),
    }


def load_config():
    from edge import config as config_mod

    return config_mod.load(ROOT / "config.yaml")


def detect_faces(labels_csv: Path, cache_dir: Path, limit: int | None) -> dict[str, np.ndarray]:
    """The largest face CenterFace finds in each padded photo (box, landmarks), cached:
    the detector is the slow part (about 25 ms a photo); crops are cut afresh each run."""
    path = detection_cache_path(labels_csv, cache_dir, limit)
    if path.is_file():
        return dict(np.load(path))
    from tqdm import tqdm

    from edge.commands.evaluate import load_padded
    from edge.inference import modelstore
    from edge.pipeline import detect

    cfg = load_config()
    models = cfg.resolve(cfg.models.dir)
    specs = modelstore.load_manifest(models)
    detector = detect.create(cfg, {"centerface": modelstore.verify(specs["centerface"], models)})
    rows = read_rows(labels_csv, limit)
    boxes = np.zeros((len(rows), 4), np.float32)
    landmarks = np.zeros((len(rows), 5, 2), np.float32)
    found = np.zeros(len(rows), bool)
    for i, row in enumerate(tqdm(rows, desc="faces", unit="img", file=sys.stderr)):
        faces = detector(load_padded(labels_csv.parent / row["file"]))
        if len(faces) == 0:
            continue
        best = int(np.argmax(faces.areas))
        boxes[i], landmarks[i], found[i] = faces.boxes[best], faces.landmarks[best], True
    data = {"boxes": boxes, "landmarks": landmarks, "found": found, **label_columns(rows)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    print(f"{path}: {len(rows)} photos, {int(found.sum())} with a face", file=sys.stderr)
    return data


FACE_COLUMNS = (
    "file",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
    *(f"point{i}_{c}" for i in range(5) for c in "xy"),
)


def write_face_list(data: dict, out: Path) -> None:
    """The detected faces as the training's data list: one row per photo with a face,
    coordinates to 0.01 px, gzipped."""
    lines = [",".join(FACE_COLUMNS)]
    for i in np.flatnonzero(data["found"]):
        values = [*data["boxes"][i], *data["landmarks"][i].ravel()]
        lines.append(",".join([str(data["paths"][i]), *(f"{float(v):.2f}" for v in values)]))
    out.parent.mkdir(parents=True, exist_ok=True)
    # no time stamp and no file name in the gzip header: the same faces, the same bytes
    with open(out, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as handle:
        handle.write(("\n".join(lines) + "\n").encode())


def read_faces(labels_csv: Path, faces: Path, limit: int | None) -> dict[str, np.ndarray]:
    """Every labelled photo (read_rows) with its face from the committed data list."""
    if not faces.is_file():
        raise SystemExit(f"{faces}: no face list; `train_classifier.py faces` writes it")
    with gzip.open(faces, "rt", newline="") as handle:
        reader = csv.reader(handle)
        if tuple(next(reader)) != FACE_COLUMNS:
            raise SystemExit(f"{faces}: header is not {','.join(FACE_COLUMNS)}")
        listed = {row[0]: np.array(row[1:], np.float32) for row in reader}
    rows = read_rows(labels_csv, limit)
    found = np.array([r["file"] in listed for r in rows])
    values = np.array([listed.get(r["file"], np.zeros(14, np.float32)) for r in rows])
    return {
        "boxes": values[:, :4].copy(),
        "landmarks": values[:, 4:].reshape(-1, 5, 2).copy(),
        "found": found,
        **label_columns(rows),
    }


def build_chips(
    labels_csv: Path, faces: Path, limit: int | None, turned_yaw: float
) -> dict[str, np.ndarray]:
    """Every photo's chip as the service cuts it (classify.faceapi_chips: the eye-line or,
    for a turned head, the box crop, and the exposure floor), uint8, in memory."""
    from tqdm import tqdm

    from edge.commands.evaluate import load_padded
    from edge.pipeline.classify import ChipSettings, faceapi_chips
    from edge.records import Detections

    data = read_faces(labels_csv, faces, limit)
    settings = dataclasses.replace(ChipSettings.from_config(load_config()), turned_yaw=turned_yaw)
    chips = np.zeros((len(data["paths"]), 112, 112, 3), np.uint8)
    for i in tqdm(np.flatnonzero(data["found"]), desc="chips", unit="img", file=sys.stderr):
        frame = load_padded(labels_csv.parent / str(data["paths"][i]))
        face = Detections(
            data["boxes"][i : i + 1], np.ones(1, np.float32), data["landmarks"][i : i + 1]
        )
        chip = faceapi_chips([frame], [face], settings)[0]
        chips[i] = np.clip(np.rint(chip), 0, 255).astype(np.uint8)
    return {**data, "chips": chips}


def cmd_faces(args) -> int:
    if args.limit and Path(args.faces) == FACES:
        raise SystemExit(
            f"--limit {args.limit} would overwrite {FACES} with a subset: give --faces"
        )
    data = detect_faces(Path(args.labels), Path(args.cache), args.limit)
    write_face_list(data, Path(args.faces))
    print(f"{args.faces}: {len(data['found'])} photos, {int(data['found'].sum())} with a face")
    return 0


# --- training -------------------------------------------------------------------------------


def augment(batch, generator):
    """Flips, shifts of up to 4 px, scale 0.93-1.07, brightness 0.8-1.2 and contrast
    0.85-1.15, per chip (torch, NCHW float 0..255)."""
    import torch
    import torch.nn.functional as F

    n = batch.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    scale = 0.93 + 0.14 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * (8 / 56)  # in [-1, 1] units
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    return ((batch - mean) * contrast + mean * brightness).clamp(0, 255)


def age_interval_loss(age, low, high):
    """Zero inside [low, high], smooth L1 (in decades) outside."""
    import torch
    import torch.nn.functional as F

    below = F.relu(low - age)
    above = F.relu(age - high)
    return F.smooth_l1_loss((below + above) / 10, torch.zeros_like(age), reduction="none")


def predict(net, chips: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(age, P(male)) per chip with flip TTA, as FaceApiAgeGender.raw computes them."""
    import torch

    ages, males = [], []
    with torch.no_grad():
        for start in range(0, len(chips), batch):
            x = torch.from_numpy(chips[start : start + batch]).permute(0, 3, 1, 2).float()
            age, gender = net(torch.cat([x, x.flip(-1)]))
            n = len(x)
            ages.append(((age[:n] + age[n:]) / 2).numpy())
            males.append(((gender[:n, 0] + gender[n:, 0]) / 2).numpy())
    return np.concatenate(ages), np.concatenate(males)


def val_score(data: dict, idx: np.ndarray, ages: np.ndarray, males: np.ndarray) -> dict:
    """Balanced (age group x gender) gender 13+ accuracy and age-group hit rate on val;
    a photo without a face is wrong on both."""
    groups = data["age_group"][idx]
    male = data["male"][idx]
    found = data["found"][idx]
    gender_ok = found & ((males >= 0.5) == male)
    low = np.array([AGE_GROUPS[g][0] for g in groups])
    high = np.array([AGE_GROUPS[g][1] for g in groups])
    # the age class line the service draws: under 18 child, 60 and over old
    truth = np.select([data["age"][idx] < 18, data["age"][idx] >= 60], [0, 2], 1)
    pred = np.select([ages < 18, ages >= 60], [0, 2], 1)
    class_ok = found & (pred == truth)
    cells = sorted({(g, m) for g, m in zip(groups, male, strict=True)})
    teen_cells = [c for c in cells if AGE_GROUPS[c[0]][0] >= 13]
    per_cell = {}
    for g, m in cells:
        mask = (groups == g) & (male == m)
        per_cell[f"{g} {'male' if m else 'female'}"] = float(gender_ok[mask].mean())
    gender_13 = float(
        np.mean([per_cell[f"{g} {'male' if m else 'female'}"] for g, m in teen_cells])
    )
    class_acc = float(np.mean([class_ok[(groups == g) & (male == m)].mean() for g, m in cells]))
    in_group = float(np.mean(found & (ages >= low) & (ages <= high)))
    worst = min((v, k) for k, v in per_cell.items() if AGE_GROUPS[k.split()[0]][0] >= 13)
    return {
        "gender_13plus_balanced": round(gender_13, 4),
        "age_class_balanced": round(class_acc, 4),
        "age_in_group": round(in_group, 4),
        "worst_gender_cell": [worst[1], round(worst[0], 4)],
        "objective": round(gender_13 + class_acc, 4),
    }


def splits(data: dict, exclude_val_group: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of split train with a face, and of split val (a miss counts there) without the
    group left out of selection."""
    train = np.flatnonzero((data["split"] == "train") & data["found"])
    val = np.flatnonzero(data["split"] == "val")
    if exclude_val_group:
        val = val[data["age_group"][val] != exclude_val_group]
    return train, val


def optimiser(params: list, args, n_train: int):
    """AdamW with a one-cycle learning rate over the whole run, in IEEE-exact steps."""
    from reproducible import OneCycleAdamW

    return OneCycleAdamW(params, args.lr, args.epochs * (n_train // args.batch), 1e-4)


def cell_weights(data: dict, train: np.ndarray):
    """Sampling weights drawing every age group x gender cell equally often (old faces are
    rare in FairFace, and the audience in front of a screen is not its mix)."""
    import torch

    cells = [f"{g}|{m}" for g, m in zip(data["age_group"][train], data["male"][train], strict=True)]
    counts: dict[str, int] = {}
    for c in cells:
        counts[c] = counts.get(c, 0) + 1
    return torch.tensor([1.0 / counts[c] for c in cells], dtype=torch.float64)


def log_epoch(history: list, epoch: int, loss: float, began: float, scored: dict) -> None:
    """One line of the training history, printed and kept for the .train.json report."""
    row = {
        "epoch": epoch,
        "loss": round(loss, 4),
        "minutes": round((time.monotonic() - began) / 60, 1),
    }
    history.append({**row, **scored})
    print(json.dumps(history[-1]), flush=True)


def cmd_train(args) -> int:
    import torch

    torch.manual_seed(SEED)
    data = build_chips(Path(args.labels), Path(args.faces), args.limit, args.turned_yaw)
    train, val = splits(data, args.exclude_val_group)
    net = build_torch(load_base_weights())
    start = BLOCKS.index(args.train_from)
    learning = set(BLOCKS[start:])
    params = []
    for name, module in net.blocks.items():
        module.requires_grad_(name in learning)
        if name in learning:
            params += list(module.parameters())
    params += list(net.fc_age.parameters()) + list(net.fc_gender.parameters())
    optimizer = optimiser(params, args, len(train))

    weights = cell_weights(data, train)
    generator = torch.Generator().manual_seed(SEED)
    low = torch.tensor([AGE_GROUPS[g][0] for g in data["age_group"]], dtype=torch.float32)
    high = torch.tensor([AGE_GROUPS[g][1] for g in data["age_group"]], dtype=torch.float32)
    male = torch.from_numpy(data["male"].astype(np.int64))
    chips = torch.from_numpy(data["chips"])

    net.eval()
    base = val_score(data, val, *predict(net, data["chips"][val]))
    print(json.dumps({"epoch": 0, **base}), flush=True)
    best, best_state, history = base["objective"], None, [{"epoch": 0, **base}]
    began = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        net.train()
        # frozen blocks keep running statistics out of it: there is no batch norm here
        order = torch.multinomial(weights, len(train), replacement=True, generator=generator)
        total = 0.0
        for b in range(len(train) // args.batch):
            pick = torch.from_numpy(train)[order[b * args.batch : (b + 1) * args.batch]]
            x = augment(chips[pick].permute(0, 3, 1, 2).float(), generator)
            age, gender_logits = net.logits(x)
            loss = (
                torch.nn.functional.cross_entropy(gender_logits, 1 - male[pick])
                + args.age_weight * age_interval_loss(age, low[pick], high[pick]).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        net.eval()
        scored = val_score(data, val, *predict(net, data["chips"][val]))
        log_epoch(history, epoch, total / max(1, len(train) // args.batch), began, scored)
        if scored["objective"] > best or args.select == "last":
            best = scored["objective"]
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is None:
        print("no epoch beat the base network on val; nothing exported", file=sys.stderr)
        return 1
    net.load_state_dict(best_state)
    net.eval()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(net, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    report = {
        "out": str(out),
        "sha256": digest,
        "seed": SEED,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "numerics": numerics_report(),
        "history": history,
        "minutes": round((time.monotonic() - began) / 60, 1),
    }
    Path(str(out) + ".train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{out}: sha256 {digest}")
    return 0


# --- Cydral's networks (clean provenance: CC0 weights, CC BY data) ---------------------------

CYDRAL = {"age": ("age-v1.onnx", 64), "gender": ("gender-v1.onnx", 32)}
# Written with float16 weights (onnx_torch.half_stored): the age network's float32 file is
# 10.8 MB, 5.4 MB so. Its expected ages move by at most 0.024 years (mean 0.004) on 604
# FairFace val faces and its probabilities by 0.001; int8 weights (2.7 MB) moved ages by
# up to 0.6 years, so float16 it is. The gender network (0.5 MB) stays float32.
HALF_STORED = {"age"}


def build_cydral_chips(labels_csv: Path, faces: Path, limit: int | None) -> dict:
    """Every photo's Cydral chips as the service cuts them (CydralAgeGender.chips: the
    dlib chip from the five landmarks at 64 and 32 px, then the exposure floor), BGR uint8."""
    from tqdm import tqdm

    from edge.commands.evaluate import load_padded
    from edge.pipeline.align import face_chips
    from edge.pipeline.classify import lift_exposure

    data = read_faces(labels_csv, faces, limit)
    floor = load_config().classifier.exposure_floor
    n = len(data["paths"])
    out = {net: np.zeros((n, size, size, 3), np.uint8) for net, (_, size) in CYDRAL.items()}
    for i in tqdm(np.flatnonzero(data["found"]), desc="chips", unit="img", file=sys.stderr):
        frame = load_padded(labels_csv.parent / str(data["paths"][i]))
        for net, (_, size) in CYDRAL.items():
            chip = face_chips(frame, data["landmarks"][i : i + 1], size)
            out[net][i] = lift_exposure(chip, floor)[0]
    return {**data, **{f"chips_{net}": chips for net, chips in out.items()}}


def cydral_input(chips_nhwc_bgr, generator=None):
    """Network input from BGR uint8 chips (torch NHWC), augmented when a generator is
    given: RGB, mean removed, / 256 (classify.chip_tensor)."""
    import torch

    from edge.pipeline.classify import CHANNEL_MEANS

    x = chips_nhwc_bgr.permute(0, 3, 1, 2).flip(1).float()  # NCHW RGB
    if generator is not None:
        x = augment(x, generator)
    return (x - torch.from_numpy(CHANNEL_MEANS)[None, :, None, None]) / 256


def cydral_predict(age_net, gender_net, age_chips, gender_chips, batch: int = 512):
    """(expected age over the bins, P(male)) per face with flip TTA, as the service reads
    the networks (CydralAgeGender.classify_chips, uncalibrated)."""
    import torch

    from edge.pipeline.classify import AGE_BINS

    bins = torch.from_numpy(AGE_BINS).float()
    ages, males = [], []
    with torch.no_grad():
        for start in range(0, len(age_chips), batch):
            outs = []
            for net, chips in ((age_net, age_chips), (gender_net, gender_chips)):
                x = cydral_input(torch.from_numpy(chips[start : start + batch]))
                outs.append((net(x) + net(x.flip(-1))) / 2)
            ages.append((outs[0] @ bins).numpy())
            males.append(outs[1][:, 1].numpy())
    return np.concatenate(ages), np.concatenate(males)


def export_cydral(args, nets: dict, base: dict, best_state: dict, history: list, began: float):
    """Both networks at the chosen epoch as ONNX, and the run's report beside them."""
    from onnx_torch import half_stored, write_back

    report: dict = {
        "seed": SEED,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "numerics": numerics_report(),
    }
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for net, module in nets.items():
        module.load_state_dict(best_state[net])
        out = Path(args.out_dir) / f"cydral-fairface-{net}.onnx"
        model = write_back(module, base[net])
        if net in HALF_STORED:
            model = half_stored(model)
        out.write_bytes(model.SerializeToString(deterministic=True))
        report[net] = {"out": str(out), "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
        print(f"{out}: sha256 {report[net]['sha256']}")
    report |= {"history": history, "minutes": round((time.monotonic() - began) / 60, 1)}
    (Path(args.out_dir) / "cydral-fairface.train.json").write_text(
        json.dumps(report, indent=2) + "\n"
    )


def cmd_train_cydral(args) -> int:
    """Fine-tune Cydral's age and gender networks together on FairFace's train split: the
    gender net by cross-entropy, the age net by the log of its probability mass inside
    the photo's FairFace age group (its output is a distribution over ages, so a group
    label is a set of bins); same sampling, augmentation and selection as `train`."""
    import onnx
    import torch
    from onnx_torch import OnnxModule

    from edge.pipeline.classify import AGE_BINS

    torch.manual_seed(SEED)
    data = build_cydral_chips(Path(args.labels), Path(args.faces), args.limit)
    train, val = splits(data, args.exclude_val_group)
    models_dir = ROOT / "models"
    base = {net: onnx.load(models_dir / file) for net, (file, _) in CYDRAL.items()}
    nets = {net: OnnxModule(model) for net, model in base.items()}
    logits_of = {net: model.graph.node[-1].input[0] for net, model in base.items()}
    # Both networks learn by default; --nets gender leaves the age network as it is (the
    # gender network's steps stay the same: the two share no weights and the age chips'
    # augmentation is still drawn, so the random stream is the same).
    params = [p for net in ("age", "gender") if net in args.nets for p in nets[net].parameters()]
    optimizer = optimiser(params, args, len(train))

    weights = cell_weights(data, train)
    generator = torch.Generator().manual_seed(SEED)
    # bins inside each photo's age group (the network's 81 bins: 0.25, 1, ..., 80 years)
    low = np.array([AGE_GROUPS[g][0] for g in data["age_group"]])
    high = np.array([AGE_GROUPS[g][1] for g in data["age_group"]])
    inside = torch.from_numpy(
        (AGE_BINS[None, :] >= low[:, None]) & (AGE_BINS[None, :] <= high[:, None])
    )
    male = torch.from_numpy(data["male"].astype(np.int64))
    chips = {net: torch.from_numpy(data[f"chips_{net}"]) for net in CYDRAL}

    def step_loss(pick):
        """The batch's loss; the age chips' augmentation is drawn first, as it always was."""
        age_input = cydral_input(chips["age"][pick], generator)
        (gender_logits,) = nets["gender"](
            cydral_input(chips["gender"][pick], generator), (logits_of["gender"],)
        )
        loss = torch.nn.functional.cross_entropy(gender_logits, male[pick])
        if "age" in args.nets:
            (age_logits,) = nets["age"](age_input, (logits_of["age"],))
            log_p = torch.log_softmax(age_logits, dim=1)
            age_loss = -torch.logsumexp(log_p.masked_fill(~inside[pick], -1e4), dim=1).mean()
            loss = loss + args.age_weight * age_loss
        return loss

    def score() -> dict:
        for net in nets.values():
            net.eval()
        return val_score(
            data,
            val,
            *cydral_predict(
                nets["age"], nets["gender"], data["chips_age"][val], data["chips_gender"][val]
            ),
        )

    first = score()
    print(json.dumps({"epoch": 0, **first}), flush=True)
    best, best_state, history = first["objective"], None, [{"epoch": 0, **first}]
    began = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        for net in nets.values():
            net.train()
        order = torch.multinomial(weights, len(train), replacement=True, generator=generator)
        total = 0.0
        for b in range(len(train) // args.batch):
            pick = torch.from_numpy(train)[order[b * args.batch : (b + 1) * args.batch]]
            loss = step_loss(pick)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        scored = score()
        log_epoch(history, epoch, total / max(1, len(train) // args.batch), began, scored)
        if scored["objective"] > best or args.select == "last":
            best = scored["objective"]
            best_state = {
                net: {k: v.clone() for k, v in m.state_dict().items()} for net, m in nets.items()
            }
    if best_state is None:
        print("no epoch beat the base networks on val; nothing exported", file=sys.stderr)
        return 1
    export_cydral(args, nets, base, best_state, history, began)
    return 0


def tfjs_weights(net) -> dict[str, np.ndarray]:
    """The network's parameters under face-api's TF.js names and layouts (HWIO filters,
    (in, out) dense weights): the inverse of build_torch."""
    weights: dict[str, np.ndarray] = {}

    def put(name: str, tensor, axes: tuple[int, ...] | None = None) -> None:
        value = tensor.detach().numpy()
        weights[name] = np.ascontiguousarray(value if axes is None else value.transpose(axes))

    for module in net.modules():
        kind, name = type(module).__name__, getattr(module, "prefix", "")
        if kind == "Conv":
            put(f"{name}/filters", module.weight, (2, 3, 1, 0))
            put(f"{name}/bias", module.bias)
        elif kind == "Separable":
            put(f"{name}/depthwise_filter", module.depthwise, (2, 3, 0, 1))
            put(f"{name}/pointwise_filter", module.pointwise, (2, 3, 1, 0))
            put(f"{name}/bias", module.bias)
        elif kind == "Dense":
            put(f"{name}/weights", module.weight)
            put(f"{name}/bias", module.bias)
    return weights


def export_onnx(net, out: Path) -> None:
    """The ONNX file the service loads, written by the same converter as the base model
    (faceapi.build_onnx: same graph, names and opset; deterministic bytes), from the
    fine-tuned weights."""
    from edge.inference import faceapi

    model = faceapi.build_onnx(tfjs_weights(net))
    out.write_bytes(model.SerializeToString(deterministic=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default=str(FAIRFACE), help="FairFace labels.csv")
    parser.add_argument(
        "--cache", default=str(CACHE), help="where `faces` caches the detector's runs"
    )
    parser.add_argument("--limit", type=int, help="use a spread-out subset of N photos")
    parser.add_argument(
        "--faces", default=str(FACES), help="the data list: each photo's face (`faces` writes it)"
    )
    parser.add_argument("--threads", type=int, default=2, help="part of the result: keep it")
    parser.add_argument(
        "--numerics",
        choices=("portable", "native"),
        default="portable",
        help="portable: the same bytes on any x86-64 CPU (tools/reproducible.py); native: "
        "the CPU's fastest kernels, for quick experiments (bytes differ between CPUs)",
    )
    parser.add_argument(
        "--select",
        choices=("best", "last"),
        default="best",
        help="export the epoch best on val, or the last (tools/repro_check.sh: a short run "
        "need not beat the base)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the PyTorch port against the ONNX model").set_defaults(
        func=cmd_check
    )
    sub.add_parser("faces", help="detect and cache every photo's face").set_defaults(func=cmd_faces)
    p = sub.add_parser("train", help="fine-tune, choose the best epoch on val, export ONNX")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--age-weight", type=float, default=1.0)
    p.add_argument("--train-from", default="middle_flow/main_block_0", choices=BLOCKS)
    p.add_argument(
        "--exclude-val-group",
        default="10-19",
        help="age group left out of selection (10-19 straddles the child/adult line)",
    )
    p.add_argument(
        "--turned-yaw",
        type=float,
        default=0.5,
        help="heads turned past this get the box crop (classifier.turned_yaw); the model "
        "must be run with the same setting",
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "train-cydral", help="fine-tune Cydral's age and gender networks, export both ONNX"
    )
    p.add_argument("--out-dir", required=True, help="writes cydral-fairface-{age,gender}.onnx")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--age-weight", type=float, default=1.0)
    p.add_argument("--exclude-val-group", default="10-19")
    p.add_argument(
        "--nets",
        choices=("age,gender", "gender"),
        default="age,gender",
        help="which networks learn (gender alone: a quick experiment; the gender network "
        "comes out the same as in a run of both, the age file is the untuned one)",
    )
    p.set_defaults(func=cmd_train_cydral)
    args = parser.parse_args(argv)
    pin_numerics(args.threads, portable=args.numerics == "portable")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
