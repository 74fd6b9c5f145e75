"""ONNX Runtime sessions: provider choice, GPU fallback reported in one line.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU
and, asked to use it there, prints two error lines before falling back. We
probe the CUDA driver ourselves first, drop GPU providers when it is absent,
and log what is really in use.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

_ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU = ("tensorrt", "cuda")


@functools.lru_cache(maxsize=1)
def gpu_probe() -> tuple[int, str]:
    """(number of CUDA devices, reason when none) from the driver API."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    if cuda.cuInit(0) != 0:
        return 0, "NVIDIA driver present but cuInit failed (no usable GPU)"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "NVIDIA driver present but no GPU visible"
    return count.value, ""


@functools.lru_cache(maxsize=8)
def choose_providers(preferred: tuple[str, ...]) -> tuple[str, ...]:
    """ORT provider names to request, GPU ones dropped (logged once) when unusable."""
    available = set(ort.get_available_providers())
    chosen, dropped = [], []
    for name in preferred:
        ort_name = _ORT_NAMES[name]
        if ort_name not in available:
            dropped.append(f"{name} (not in this onnxruntime build)")
        elif name in _GPU and gpu_probe()[0] == 0:
            dropped.append(f"{name} ({gpu_probe()[1]})")
        else:
            chosen.append(ort_name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if dropped:
        log.warning("execution providers skipped: %s; using %s",
                    ", ".join(dropped), ", ".join(chosen))
    return tuple(chosen)


def session(model: Path | bytes, providers: tuple[str, ...], threads: int = 0,
            label: str = "model") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings are fixed at the source
    # Several sessions (detector, age, gender) share few cores: threads that
    # spin after a run steal the next session's CPU time, so let them sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(source, sess_options=options,
                                providers=list(choose_providers(tuple(providers))))
    log.debug("%s runs on %s", label, sess.get_providers()[0])
    return sess


def active_provider(sess: ort.InferenceSession) -> str:
    name = sess.get_providers()[0]
    return {v: k for k, v in _ORT_NAMES.items()}.get(name, name)
