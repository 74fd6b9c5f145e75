"""ONNX Runtime sessions: provider choice, GPU fallback in one line, the GPU batch path.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU
and, asked to use it there, prints error lines before falling back. We probe
the CUDA driver and the libraries the provider links against ourselves first,
drop GPU providers that cannot run, and log what is really in use.

`BatchRunner` is the one place that feeds a session: plain `session.run` on
the CPU; on a GPU, fixed batch buckets and I/O binding with preallocated
inputs (see its docstring).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.config import Config, bucket_problem
from edge.errors import ConfigError

log = logging.getLogger(__name__)

_ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU = ("tensorrt", "cuda")
DEFAULT_BUCKETS = (1, 4, 16, 64, 128)


@dataclass(frozen=True)
class GpuOptions:
    """What only the GPU path uses: batch buckets, I/O binding, TensorRT's engine cache."""

    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    trt_cache_dir: Path | None = None  # None: no engine cache, TensorRT rebuilds at each start
    trt_fp16: bool = False
    # Take the GPU path (buckets, I/O binding) on this device whatever the provider:
    # 'cpu' runs that code on a machine without a GPU (tests).
    force_device: str | None = None

    def __post_init__(self):
        problem = bucket_problem(self.buckets)
        if problem:
            raise ConfigError(problem)
        object.__setattr__(self, "buckets", tuple(sorted(set(self.buckets))))

    @classmethod
    def from_config(cls, config: Config) -> GpuOptions:
        r = config.runtime
        cache = (
            config.resolve(r.trt_cache_dir)
            if r.trt_cache_dir
            else config.state_path() / "trt-cache"
        )
        return cls(tuple(r.batch_buckets), cache, r.trt_fp16)


@dataclass(frozen=True)
class Placement:
    """Where a model's sessions run: ONNX Runtime providers in order of preference,
    CPU threads per session (0 = ONNX Runtime decides), GpuOptions. `Placement()` is
    the CPU with ONNX Runtime's own thread count."""

    providers: tuple[str, ...] = ("cpu",)
    threads: int = 0
    gpu: GpuOptions = GpuOptions()

    def __post_init__(self):
        object.__setattr__(self, "providers", tuple(self.providers))  # a list from a caller

    @classmethod
    def from_config(cls, config: Config) -> Placement:
        r = config.runtime
        return cls(tuple(r.providers), r.threads, GpuOptions.from_config(config))

    def session(
        self,
        model: Path | bytes,
        label: str,
        batch_inputs: dict[str, tuple[int, ...]] | None = None,
    ) -> ort.InferenceSession:
        """`session` on these providers, with this thread count and these GPU options."""
        return session(
            model, self.providers, self.threads, label, gpu=self.gpu, batch_inputs=batch_inputs
        )


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


def provider_libraries(name: str, cuda_version: str | None = None) -> list[str]:
    """Shared libraries onnxruntime-gpu's provider `name` needs besides the driver."""
    major = (cuda_version or getattr(ort, "cuda_version", "") or "").split(".")[0]
    if name not in _GPU or not major:
        return []
    # cuDNN 9 is what onnxruntime-gpu builds since 1.19 load; TensorRT 10 likewise.
    cuda = [f"libcudart.so.{major}", f"libcublas.so.{major}", "libcudnn.so.9"]
    return cuda + ["libnvinfer.so.10"] if name == "tensorrt" else cuda


@functools.lru_cache(maxsize=1)
def _preload_cuda_libraries() -> None:
    # Finds CUDA and cuDNN in the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn], or
    # PyTorch's), where the dynamic loader would not look. It print()s what it misses:
    # our own check reports that, in one line, and stdout must stay clean JSON.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        ort.preload_dlls()


def _loadable(library: str) -> bool:
    try:
        ctypes.CDLL(library)
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def unusable(name: str) -> str:
    """Why provider `name` (tensorrt, cuda, cpu) cannot run here; '' when it can."""
    if _ORT_NAMES[name] not in ort.get_available_providers():
        return "not in this onnxruntime build"
    if name not in _GPU:
        return ""
    count, reason = gpu_probe()
    if count == 0:
        return reason
    _preload_cuda_libraries()
    missing = [lib for lib in provider_libraries(name) if not _loadable(lib)]
    if missing:
        return f"{', '.join(missing)} not found, needed by onnxruntime-gpu {ort.__version__}"
    return ""


@functools.lru_cache(maxsize=8)
def choose_providers(preferred: tuple[str, ...]) -> tuple[str, ...]:
    """ORT provider names to request, GPU ones dropped (logged once) when unusable."""
    chosen, dropped = [], []
    for name in preferred:
        reason = unusable(name)
        if reason:
            dropped.append(f"{name} ({reason})")
        else:
            chosen.append(_ORT_NAMES[name])
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if dropped:
        log.warning(
            "execution providers skipped: %s; using %s", ", ".join(dropped), ", ".join(chosen)
        )
    return tuple(chosen)


def provider_options(
    chosen: tuple[str, ...], gpu: GpuOptions, batch_inputs: dict[str, tuple[int, ...]] | None = None
) -> list[dict]:
    """Options for each chosen ORT provider, in order; `batch_inputs` maps an input name
    to its shape without the batch dimension (pure: tested without a GPU)."""
    options: list[dict] = []
    for name in chosen:
        if name != _ORT_NAMES["tensorrt"]:
            options.append({})
            continue
        trt = {"trt_fp16_enable": str(gpu.trt_fp16)}
        if gpu.trt_cache_dir is not None:
            # Building an engine takes minutes; the cache makes it once per model and shape.
            trt |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(gpu.trt_cache_dir),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(gpu.trt_cache_dir),
            }
        if batch_inputs:
            # One profile covering every bucket: one engine, not a rebuild per new size.
            for key, batch in (("min", 1), ("opt", gpu.buckets[-1]), ("max", gpu.buckets[-1])):
                trt[f"trt_profile_{key}_shapes"] = ",".join(
                    f"{n}:{'x'.join(str(d) for d in (batch, *shape))}"
                    for n, shape in batch_inputs.items()
                )
        options.append(trt)
    return options


def without_denormals(model: bytes) -> bytes | None:
    """The model with its denormal float32 weights set to zero, or None when it has none.

    Cydral's age network (models/age-v1.onnx) carries 6,667 weights below float32's
    smallest normal number (|w| < 1.2e-38), its gender network 145 (cydral-fairface-age,
    stored as float16, has none left). Every multiply by one takes the CPU's slow
    microcode path: the age network ran 6.7 ms per face on one core, 0.75 ms with them
    set to zero, and its outputs did not change at all (their products are far below
    anything that reaches the output). ONNX Runtime's `session.set_denormal_as_zero`
    did not help on the caller's thread, so the weights are fixed here, in memory: the
    file on disk stays the pinned, verified one."""
    import onnx  # lazy: only sessions pay for it, not every `edge` command
    from onnx import numpy_helper

    proto = onnx.load_from_string(model)
    tiny = np.finfo(np.float32).tiny
    changed = 0
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(init)
        denormal = (value != 0) & (np.abs(value) < tiny)
        if denormal.any():
            changed += int(denormal.sum())
            init.CopyFrom(numpy_helper.from_array(np.where(denormal, 0, value), init.name))
    if not changed:
        return None
    log.debug("%d denormal weights set to zero", changed)
    return proto.SerializeToString()


def session(
    model: Path | bytes,
    providers,
    threads: int = 0,
    label: str = "model",
    *,
    gpu: GpuOptions = GpuOptions(),
    batch_inputs: dict[str, tuple[int, ...]] | None = None,
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings are fixed at the source
    # Several sessions (detector, age, gender) share few cores: threads that
    # spin after a run steal the next session's CPU time, so let them sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    chosen = choose_providers(tuple(providers))
    if _ORT_NAMES["tensorrt"] in chosen and gpu.trt_cache_dir is not None:
        Path(gpu.trt_cache_dir).mkdir(parents=True, exist_ok=True)
    flushed = without_denormals(model if isinstance(model, bytes) else Path(model).read_bytes())
    source = flushed if flushed is not None else model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(
        source,
        sess_options=options,
        providers=list(chosen),
        provider_options=provider_options(chosen, gpu, batch_inputs),
    )
    log.debug("%s runs on %s", label, sess.get_providers()[0])
    return sess


def active_provider(sess: ort.InferenceSession) -> str:
    name = sess.get_providers()[0]
    return {v: k for k, v in _ORT_NAMES.items()}.get(name, name)


def bucket_plan(n: int, buckets: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(start, rows, bucket) chunks feeding `n` rows: each padded up to the next bucket,
    beyond the largest bucket split into chunks of it."""
    largest = buckets[-1]
    plan = []
    for start in range(0, n, largest):
        rows = min(largest, n - start)
        plan.append((start, rows, next(b for b in buckets if b >= rows)))
    return plan


class BatchRunner:
    """Feeds one session batches of any size; returns the outputs for the real rows.

    CPU (no device): `session.run` at the batch's own size. The CPU does not plan
    per shape, and padding would cost compute in proportion.
    GPU path (device 'cuda', or any device forced through GpuOptions): rows are
    padded up to a bucket size, so the provider plans (cuDNN's algorithm search,
    TensorRT's profile) a few shapes once, not every new batch size; each bucket
    has an input OrtValue on the device, bound once and refilled in place, and
    outputs are bound to the CPU (they are small and read there at once).
    """

    def __init__(
        self,
        sess: ort.InferenceSession,
        gpu: GpuOptions = GpuOptions(),
        outputs: tuple[str, ...] | None = None,
    ):
        self.sess = sess
        self.device = gpu.force_device or ("cuda" if active_provider(sess) in _GPU else None)
        self.buckets = gpu.buckets
        self._input = sess.get_inputs()[0].name
        self._outputs = list(outputs or (o.name for o in sess.get_outputs()))
        self._bound: dict[int, tuple[np.ndarray, ort.OrtValue, ort.IOBinding]] = {}

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.device is None or len(batch) == 0:
            return self.sess.run(self._outputs, {self._input: batch})
        parts = [
            self._run_bucket(batch[start : start + rows], bucket)
            for start, rows, bucket in bucket_plan(len(batch), self.buckets)
        ]
        return [np.concatenate(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=False)]

    def _run_bucket(self, rows: np.ndarray, bucket: int) -> list[np.ndarray]:
        host, value, binding = self._binding(bucket, rows)
        if len(rows) == bucket and rows.flags.c_contiguous:
            value.update_inplace(rows)
        else:
            # Rows past the real ones keep whatever they held: every row is computed
            # on its own and their outputs are dropped.
            host[: len(rows)] = rows
            value.update_inplace(host)
        binding.synchronize_inputs()
        self.sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return [out[: len(rows)] for out in binding.copy_outputs_to_cpu()]

    def _binding(self, bucket: int, rows: np.ndarray):
        bound = self._bound.get(bucket)
        if bound is None:  # made on first use: large buckets cost memory only when used
            host = np.zeros((bucket, *rows.shape[1:]), rows.dtype)
            value = ort.OrtValue.ortvalue_from_numpy(host, self.device, 0)
            binding = self.sess.io_binding()
            binding.bind_ortvalue_input(self._input, value)
            for name in self._outputs:
                binding.bind_output(name, "cpu")
            bound = self._bound[bucket] = (host, value, binding)
        return bound
