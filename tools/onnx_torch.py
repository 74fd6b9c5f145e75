"""A small ONNX graph run by PyTorch with its weights trainable, and written back.

tools/train_classifier.py fine-tunes Cydral's age and gender networks (models/age-v1.onnx,
models/gender-v1.onnx) with it. onnx2torch would convert them too, but its import wants
torchvision, whose PyPI wheel does not match torch 2.13; these two graphs use a dozen
plain operators, so an interpreter of those is shorter than working around that.

`OnnxModule(model)` runs the graph node by node; every float initializer with more than
one element is a parameter (convolution and dense weights and biases, the affine
scales and offsets that stand for dlib's batch norm), one-element constants (dlib's
dropout scales) stay fixed buffers. `write_back(module, model)` returns the same graph
with the learnt values in its initializers: same nodes, names, opset and input and
output, so the service loads it exactly as it loads the original.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _key(name: str) -> str:
    return name.replace(".", "_").replace("/", "_")


class OnnxModule(torch.nn.Module):
    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        unknown = {n.op_type for n in model.graph.node} - set(OPERATORS)
        if unknown:
            raise ValueError(f"operators this interpreter does not run: {sorted(unknown)}")
        self.nodes = list(model.graph.node)
        self.input_name = model.graph.input[0].name
        self.names: dict[str, str] = {}
        for init in model.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            key = _key(init.name)
            self.names[init.name] = key
            if value.is_floating_point() and value.numel() > 1:
                self.register_parameter(key, torch.nn.Parameter(value))
            else:
                self.register_buffer(key, value)

    def tensor(self, name: str) -> torch.Tensor:
        return getattr(self, self.names[name])

    def forward(self, x: torch.Tensor, outputs: tuple[str, ...] | None = None):
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for node in self.nodes:
            ins = [values[i] if i in values else self.tensor(i) for i in node.input if i]
            values[node.output[0]] = OPERATORS[node.op_type](self, node, _attrs(node), ins)
        if outputs is None:
            return values[self.nodes[-1].output[0]]
        return tuple(values[name] for name in outputs)

    def constant(self, name: str) -> np.ndarray:
        return self.tensor(name).detach().numpy()


# --- the operators: (module, node, attributes, inputs) -> output ------------------------------


def _conv(module, node, a, ins):
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise ValueError(f"{node.name}: asymmetric padding {pads}")
    return F.conv2d(
        ins[0],
        ins[1],
        ins[2] if len(ins) > 2 else None,
        stride=a.get("strides", [1, 1]),
        padding=pads[:2],
        dilation=a.get("dilations", [1, 1]),
        groups=a.get("group", 1),
    )


def _pool(module, node, a, ins):
    pads = a.get("pads", [0, 0, 0, 0])
    if any(pads):
        raise ValueError(f"{node.name}: pooling with padding {pads}")
    pool = F.max_pool2d if node.op_type == "MaxPool" else F.avg_pool2d
    return pool(
        ins[0],
        kernel_size=a["kernel_shape"],
        stride=a.get("strides", 1),
        ceil_mode=bool(a.get("ceil_mode", 0)),
    )


def _pad(module, node, a, ins):
    pads = [int(p) for p in module.constant(node.input[1])]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant" or len(pads) != 8:
        raise ValueError(f"{node.name}: only constant padding of NCHW tensors")
    # ONNX: [n, c, h, w begins, n, c, h, w ends]; torch: last axis first, in pairs
    # (dlib's residual blocks pad channels, and an odd map's bottom and right)
    value = float(module.constant(node.input[2])) if len(node.input) > 2 else 0.0
    order = (3, 7, 2, 6, 1, 5, 0, 4)
    return F.pad(ins[0], tuple(pads[k] for k in order), value=value)


def _gemm(module, node, a, ins):
    w = ins[1].T if a.get("transB", 0) else ins[1]
    x = ins[0].T if a.get("transA", 0) else ins[0]
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 else y


OPERATORS = {
    "Conv": _conv,
    "Mul": lambda m, n, a, ins: ins[0] * ins[1],
    "Add": lambda m, n, a, ins: ins[0] + ins[1],
    "Relu": lambda m, n, a, ins: F.relu(ins[0]),
    "AveragePool": _pool,
    "MaxPool": _pool,
    "GlobalAveragePool": lambda m, n, a, ins: ins[0].mean(dim=(2, 3), keepdim=True),
    "Pad": _pad,
    "Flatten": lambda m, n, a, ins: ins[0].flatten(a.get("axis", 1)),
    "Gemm": _gemm,
    "Softmax": lambda m, n, a, ins: torch.softmax(ins[0], dim=a.get("axis", -1)),
}


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the module's current values in its initializers."""
    out = copy.deepcopy(model)
    for init in out.graph.initializer:
        value = module.tensor(init.name).detach().numpy()
        init.CopyFrom(
            numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), init.name)
        )
    return out


def half_stored(model: onnx.ModelProto, min_elements: int = 1024) -> onnx.ModelProto:
    """The same network with its large weights stored as float16 and cast back to float32
    by a Cast node in front of their first use.

    Halves the file (cydral-fairface-age: 10.8 MB to 5.4) so a committed model stays a few
    MB. ONNX Runtime folds a Cast of an initializer into a float32 constant when it loads
    the session, so the network runs in float32 exactly as before, on weights rounded to
    float16 (a relative change of at most 2^-11: models/cydral-fairface.md measures its
    effect). Deterministic: the same model in gives the same bytes out."""
    out = copy.deepcopy(model)
    casts = []
    for init in out.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        name = init.name
        value = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(value, f"{name}__fp16"))
        casts.append(
            onnx.helper.make_node(
                "Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}__cast"
            )
        )
    nodes = casts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out
