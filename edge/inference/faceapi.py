"""face-api.js's age/gender network (AgeGenderNet) as ONNX, built by our own converter.

`@vladmandic/face-api` ships the network as TensorFlow.js weights: a JSON weights
manifest (names, shapes, uint8 quantisation) and one `.bin`. `build_onnx` turns
them into an ONNX graph laid out as face-api's TypeScript runs it, with numpy and
the `onnx` package only (no TensorFlow):

- `src/xception/TinyXception.ts` (`forwardInput`): subtract the RGB mean
  [122.782, 117.001, 104.298], divide by 255; `conv_in` (3x3 stride 2, 'same') and
  ReLU; reduction blocks 0 (input not activated) and 1; two main blocks; the exit
  reduction block; the exit depthwise-separable conv and ReLU.
  - reductionBlock: relu? -> sepconv0 -> relu -> sepconv1 -> maxPool 3x3 stride 2
    'same', plus a 1x1 stride-2 conv of the block input (expansion_conv).
  - mainBlock: (relu -> sepconv) x 3, plus the block input.
  - `src/common/depthwiseSeparableConv.ts`: tf.separableConv2d (depthwise 3x3, then
    pointwise 1x1), 'same', then + bias.
- `src/ageGenderNet/AgeGenderNet.ts` (`runNet`, `forwardInput`): avgPool 7x7 stride 2
  'valid' -> (N, 512); `fc/age` (`src/common/fullyConnectedLayer.ts`: matMul + bias)
  gives the age in years; `fc/gender` then softmax gives [P(male), P(female)]
  (`predictAgeAndGender` reads index 0 as male).

The graph's input is the 112x112 face chip after face-api's own `toBatchTensor`
(pad to square, bilinear resize: `face_chip` here), NCHW float32 RGB 0..255.
TensorFlow's 'same' padding puts the odd pixel at the end; ONNX gets it as explicit
pads. Dequantisation follows tfjs-core's `decodeWeights`: min + scale * q, computed
in double precision and stored as float32.

The build is deterministic (fixed names, opset, IR version and producer, no
timestamps), so the output's sha256 is pinned in models/manifest.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import ModelError
from edge.inference.geometry import similarity

if TYPE_CHECKING:  # onnx is imported where a model is built, not at start-up
    import onnx

INPUT_SIZE = 112
MEAN_RGB = (122.782, 117.001, 104.298)  # TinyXception.forwardInput
NUM_MAIN_BLOCKS = 2  # AgeGenderNet: new TinyXception(2)
OPSET = 13
IR_VERSION = 8
# Bumped whenever the graph this module writes changes (and the pinned sha256 with it).
CONVERTER_VERSION = "1"
INPUT_NAME, AGE_OUTPUT, GENDER_OUTPUT = "images", "age", "gender"


def read_weights(manifest_json: bytes, weights_bin: bytes) -> dict[str, np.ndarray]:
    """Named float32 tensors from a TF.js weights manifest and its one .bin."""
    try:
        groups = json.loads(manifest_json)
        entries = [w for group in groups for w in group["weights"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(
            f"face-api weights manifest is not a TF.js weights manifest: {exc}"
        ) from None
    weights, offset = {}, 0
    for entry in entries:
        shape = [int(d) for d in entry["shape"]]
        count = int(np.prod(shape, dtype=np.int64))
        quant = entry.get("quantization")
        if entry.get("dtype") != "float32":
            raise ModelError(
                f"face-api weight {entry['name']}: dtype {entry.get('dtype')}, "
                f"the converter knows float32 only"
            )
        if quant is None:
            size = 4 * count
            values = (
                np.frombuffer(weights_bin, "<f4", count, offset)
                if offset + size <= len(weights_bin)
                else None
            )
        elif quant.get("dtype") == "uint8" and "scale" in quant and "min" in quant:
            size = count
            q = (
                np.frombuffer(weights_bin, np.uint8, count, offset)
                if offset + size <= len(weights_bin)
                else None
            )
            # tfjs-core io_utils decodeWeights: v * scale + min in JS doubles, into a
            # Float32Array.
            values = (
                None
                if q is None
                else (q.astype(np.float64) * float(quant["scale"]) + float(quant["min"]))
            )
        else:
            raise ModelError(
                f"face-api weight {entry['name']}: quantisation {quant} "
                f"not supported (uint8 with scale and min expected)"
            )
        if values is None:
            raise ModelError(
                f"face-api weights .bin is {len(weights_bin)} bytes, too short for "
                f"{entry['name']} at byte {offset}"
            )
        weights[entry["name"]] = np.asarray(values, np.float32).reshape(shape)
        offset += size
    if offset != len(weights_bin):
        raise ModelError(
            f"face-api weights .bin is {len(weights_bin)} bytes, the manifest describes {offset}"
        )
    return weights


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow 'same' padding along one axis: (before, after, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _Graph:
    """Builds the ONNX graph node by node, tracking the (square) spatial size."""

    def __init__(self, weights: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.counter = 0

    def weight(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise ModelError(f"face-api weights manifest lacks {name}")
        self.used.add(name)
        return self.weights[name]

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, size: int, prefix: str, stride: int) -> tuple[str, int]:
        """TinyXception's conv(): conv2d 'same' + bias. TF filters are HWIO."""
        filters = self.weight(f"{prefix}/filters")
        kh = filters.shape[0]
        before, after, out = same_pads(size, kh, stride)
        w = self.const(f"{prefix}/filters", filters.transpose(3, 2, 0, 1))
        b = self.const(f"{prefix}/bias", self.weight(f"{prefix}/bias"))
        y = self.node(
            "Conv",
            [x, w, b],
            f"{prefix}/conv",
            kernel_shape=[kh, kh],
            strides=[stride, stride],
            pads=[before, before, after, after],
        )
        return y, out

    def separable(self, x: str, size: int, prefix: str) -> str:
        """depthwiseSeparableConv(): separableConv2d stride 1 'same', then + bias."""
        depthwise = self.weight(f"{prefix}/depthwise_filter")  # (kh, kw, C, 1)
        pointwise = self.weight(f"{prefix}/pointwise_filter")  # (1, 1, C, O)
        kh, channels = depthwise.shape[0], depthwise.shape[2]
        before, after, _ = same_pads(size, kh, 1)
        dw = self.const(f"{prefix}/depthwise_filter", depthwise.transpose(2, 3, 0, 1))
        pw = self.const(f"{prefix}/pointwise_filter", pointwise.transpose(3, 2, 0, 1))
        b = self.const(f"{prefix}/bias", self.weight(f"{prefix}/bias"))
        y = self.node(
            "Conv",
            [x, dw],
            f"{prefix}/depthwise",
            kernel_shape=[kh, kh],
            group=channels,
            pads=[before, before, after, after],
        )
        return self.node("Conv", [y, pw, b], f"{prefix}/pointwise", kernel_shape=[1, 1])

    def relu(self, x: str) -> str:
        self.counter += 1
        return self.node("Relu", [x], f"relu_{self.counter}")

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)

    def reduction_block(
        self, x: str, size: int, prefix: str, activate_input: bool = True
    ) -> tuple[str, int]:
        out = self.relu(x) if activate_input else x
        out = self.separable(out, size, f"{prefix}/separable_conv0")
        out = self.separable(self.relu(out), size, f"{prefix}/separable_conv1")
        before, after, pooled = same_pads(size, 3, 2)
        # MaxPool ignores its pads, as TensorFlow's 'same' max pooling does.
        out = self.node(
            "MaxPool",
            [out],
            f"{prefix}/max_pool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[before, before, after, after],
        )
        expansion, expanded = self.conv(x, size, f"{prefix}/expansion_conv", 2)
        assert expanded == pooled
        return self.add(out, expansion, f"{prefix}/add"), pooled

    def main_block(self, x: str, size: int, prefix: str) -> str:
        out = self.separable(self.relu(x), size, f"{prefix}/separable_conv0")
        out = self.separable(self.relu(out), size, f"{prefix}/separable_conv1")
        out = self.separable(self.relu(out), size, f"{prefix}/separable_conv2")
        return self.add(out, x, f"{prefix}/add")

    def fully_connected(self, x: str, prefix: str) -> str:
        w = self.const(f"{prefix}/weights", self.weight(f"{prefix}/weights"))
        b = self.const(f"{prefix}/bias", self.weight(f"{prefix}/bias"))
        return self.add(self.node("MatMul", [x, w], f"{prefix}/matmul"), b, f"{prefix}/add")


def build_onnx(weights: dict[str, np.ndarray]):
    """The AgeGenderNet graph (onnx.ModelProto) from dequantised weights."""
    from onnx import TensorProto, checker, helper

    g = _Graph(weights)
    mean = np.array(MEAN_RGB, np.float32).reshape(1, 3, 1, 1)
    x = g.node("Sub", [INPUT_NAME, g.const("mean_rgb", mean)], "normalize")
    x = g.node("Div", [x, g.const("scale_255", np.array(255, np.float32))], "normalize/div")
    size = INPUT_SIZE
    x, size = g.conv(x, size, "entry_flow/conv_in", 2)
    x = g.relu(x)
    x, size = g.reduction_block(x, size, "entry_flow/reduction_block_0", activate_input=False)
    x, size = g.reduction_block(x, size, "entry_flow/reduction_block_1")
    for idx in range(NUM_MAIN_BLOCKS):
        x = g.main_block(x, size, f"middle_flow/main_block_{idx}")
    x, size = g.reduction_block(x, size, "exit_flow/reduction_block")
    x = g.relu(g.separable(x, size, "exit_flow/separable_conv"))
    if size != 7:
        raise ModelError(f"face-api graph: bottleneck is {size}x{size}, expected 7x7")
    x = g.node("AveragePool", [x], "avg_pool", kernel_shape=[7, 7], strides=[2, 2])
    x = g.node("Flatten", [x], "pooled", axis=1)
    age = g.fully_connected(x, "fc/age")
    g.node("Squeeze", [age, g.const("age_axis", np.array([1], np.int64))], AGE_OUTPUT)
    gender = g.fully_connected(x, "fc/gender")
    g.node("Softmax", [gender], GENDER_OUTPUT, axis=1)
    unused = sorted(set(weights) - g.used)
    if unused:
        raise ModelError(f"face-api weights not used by the graph: {', '.join(unused)}")

    graph = helper.make_graph(
        g.nodes,
        "faceapi_age_gender",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE]
            )
        ],
        [
            helper.make_tensor_value_info(AGE_OUTPUT, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(GENDER_OUTPUT, TensorProto.FLOAT, ["N", 2]),
        ],
        g.initializers,
        doc_string="face-api.js AgeGenderNet (TinyXception, 2 main blocks). Input: 112x112 "
        "RGB chips, NCHW float 0..255. Outputs: age in years; softmax "
        "[male, female].",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        # the name the pinned build carries (the module's first home)
        producer_name="edge.faceapi",
        producer_version=CONVERTER_VERSION,
        ir_version=IR_VERSION,
    )
    checker.check_model(model)
    return model


def convert(manifest_path: Path, bin_path: Path, out_path: Path) -> bytes:
    """Build the ONNX file from the two face-api files; returns the bytes written."""
    weights = read_weights(Path(manifest_path).read_bytes(), Path(bin_path).read_bytes())
    data = build_onnx(weights).SerializeToString(deterministic=True)
    Path(out_path).write_bytes(data)
    return data


# --- face-api's crop convention --------------------------------------------------------
#
# face-api classifies age and gender on the face's `alignedRect`
# (globalApi/extractFacesAndComputeResults.ts): FaceLandmarks.align() with its defaults
# is alignMinBbox(0.2), the bounding box of the 68 landmarks grown by 20 % of its width
# and height (Box.pad: half on each side). extractFaceTensors cuts that box clipped to
# the image and floored (Box.clipAtImageBorders); the network's toBatchTensor(112, true)
# pads it to a square with zeros, half the difference after the image (Math.round) and
# the rest before (ops/padToSquare.ts), then tf.image.resizeBilinear to 112x112 without
# align_corners or half-pixel centres; the image is RGB.
#
# We have five points (eye centres, nose tip, mouth corners), not 68. The 68-point
# face outline that bounds the box (jaw 0-16, brows 17-26 of the iBUG layout) is placed
# by a least-squares similarity from a template of eye centres and mouth corners to
# ours. The frame is insightface's mean face (meanshape_68.pkl: eye midpoint at the
# origin, unit eye distance); the outline in that frame is where face-api's own
# landmark network (faceLandmark68Net) puts it: the per-point median over 299 dev faces
# (tools/derive_faceapi_box.py; docs/calibration.md section 7). The nose tip is left
# out of the fit: its height depends on head pitch and annotation convention more
# than the other four points do.
FIT_TEMPLATE = np.array(
    [  # image-left eye, image-right eye, mouth corners (RetinaFace order 0, 1, 3, 4)
        [-0.5, 0.0001],
        [0.5, -0.0001],
        [-0.3644, 1.0434],
        [0.4252, 1.0465],
    ]
)
OUTLINE_TEMPLATE = np.array(
    [
        [-1.2088, 0.0615],
        [-1.1631, 0.3596],
        [-1.0912, 0.6455],
        [-1.0216, 0.8940],
        [-0.9070, 1.1597],
        [-0.7394, 1.3669],
        [-0.5463, 1.5010],
        [-0.3008, 1.6539],
        [0.0549, 1.7210],
        [0.3999, 1.6070],
        [0.6266, 1.4550],
        [0.7949, 1.3025],
        [0.9420, 1.0686],
        [1.0360, 0.7881],
        [1.0770, 0.5286],
        [1.1012, 0.2524],
        [1.1014, -0.0475],
        [-0.9730, -0.2130],
        [-0.8401, -0.3220],
        [-0.6696, -0.3619],
        [-0.5036, -0.3575],
        [-0.3610, -0.3099],
        [0.2373, -0.3360],
        [0.3783, -0.3940],
        [0.5346, -0.4242],
        [0.7183, -0.4107],
        [0.8550, -0.3243],
    ]
)
BOX_PADDING = 0.2  # FaceLandmarks.align: minBoxPadding


def aligned_box(landmarks: np.ndarray) -> np.ndarray:
    """face-api's alignedRect (x, y, width, height, float pixels) from 5 RetinaFace points."""
    points = np.asarray(landmarks, np.float64)
    matrix = similarity(FIT_TEMPLATE, points[[0, 1, 3, 4]])
    outline = OUTLINE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2]
    x0, y0 = outline.min(0)
    x1, y1 = outline.max(0)
    w, h = x1 - x0, y1 - y0
    return np.array(
        [
            x0 - BOX_PADDING * w / 2,
            y0 - BOX_PADDING * h / 2,
            w * (1 + BOX_PADDING),
            h * (1 + BOX_PADDING),
        ]
    )


def clip_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Box.clipAtImageBorders: clip to the image, then floor x, y, width and height."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = max(x, 0.0), max(y, 0.0)
    cw = min(x + w - cx, width - cx)
    ch = min(y + h - cy, height - cy)
    return int(np.floor(cx)), int(np.floor(cy)), int(np.floor(cw)), int(np.floor(ch))


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """ops/padToSquare.ts with isCenterImage: zeros, round(diff / 2) after, the rest before."""
    h, w = image.shape[:2]
    if h == w:
        return image
    diff = abs(h - w)
    after = int(np.floor(diff * 0.5 + 0.5))  # Math.round
    before = diff - after
    pads = ((0, 0), (before, after)) if h > w else ((before, after), (0, 0))
    return np.pad(image, pads + ((0, 0),) * (image.ndim - 2))


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """tf.image.resizeBilinear(align_corners=false, half_pixel_centers=false) as
    tfjs-backend-cpu computes it: source = destination * (in / out), clamped; float32."""

    def taps(n_in: int):
        frac = (n_in / size) * np.arange(size, dtype=np.float64)
        lo = np.maximum(0, np.floor(frac)).astype(np.intp)
        hi = np.minimum(n_in - 1, np.ceil(frac)).astype(np.intp)
        return lo, hi, frac - lo

    # Only the taps are read (not whole rows of a large crop). JavaScript computes in
    # doubles and stores float32: so do we.
    r0, r1, fr = taps(image.shape[0])
    c0, c1, fc = taps(image.shape[1])
    fc = fc[:, None]

    def at(rows, cols):
        return image.take(rows, axis=0).take(cols, axis=1).astype(np.float64)

    top_left, top_right = at(r0, c0), at(r0, c1)
    bottom_left, bottom_right = at(r1, c0), at(r1, c1)
    top = top_left + (top_right - top_left) * fc
    bottom = bottom_left + (bottom_right - bottom_left) * fc
    return (top + (bottom - top) * fr[:, None, None]).astype(np.float32)


def chip_from_crop(crop_rgb: np.ndarray) -> np.ndarray:
    """NetInput.toBatchTensor(112, true) on one face crop: (112, 112, 3) float32 RGB."""
    square = pad_to_square(crop_rgb)
    if square.shape[0] == INPUT_SIZE:
        return square.astype(np.float32)
    return resize_bilinear(square, INPUT_SIZE)


def face_chip(frame_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 float32 RGB chip face-api would classify for this face."""
    return _chip(frame_bgr, aligned_box(landmarks))


# For a turned head the five points no longer fit the frontal template: the eye line
# foreshortens and the box shrinks onto half the face. The detector's box still holds
# the whole face; this maps it to the box aligned_box gives for a frontal face: centre
# shift (x, y) and size (width, height) as fractions of the detector box's width and
# height, the medians over 711 frontal faces (|yaw| < 0.25) of FairFace's train split
# (CenterFace on the padded photo; docs/calibration.md section 11; x set to 0 by
# symmetry, measured -0.014).
BOX_TO_ALIGNED = (0.0, 0.081, 1.199, 0.98)


def box_chip(frame_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The chip for a turned face: the detector's (x1, y1, x2, y2) box mapped to the
    frontal aligned box's placement and size (BOX_TO_ALIGNED), then face-api's crop."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    dx, dy, sw, sh = BOX_TO_ALIGNED
    cx, cy = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
    return _chip(frame_bgr, np.array([cx - sw * w / 2, cy - sh * h / 2, sw * w, sh * h]))


def _chip(frame_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    height, width = frame_bgr.shape[:2]
    x, y, w, h = clip_box(box, width, height)
    if w <= 0 or h <= 0:  # face-api drops such boxes; a black chip keeps rows aligned
        return np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    return chip_from_crop(frame_bgr[y : y + h, x : x + w, ::-1])
