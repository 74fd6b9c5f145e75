"""Training whose bytes do not depend on the CPU it runs on (tools/train_classifier.py).

PyTorch picks its kernels by the CPU: AVX-512, AVX2 or SSE code in ATen, oneDNN and MKL,
each adding up a sum in its own order, and MKL's vector maths (`torch.sqrt` among them)
answering to within an ulp, differently on Intel and AMD. One ulp in one weight after the
first step is a different network after three epochs: the committed Cydral run, repeated
on an AVX-512 Xeon, diverged at epoch 1 (models/cydral-fairface.md). So a portable run:

- pins every kernel family to code that every x86-64 CPU runs the same way: ATen's
  default (non-vector) kernels, oneDNN's SSE4.1 kernels, MKL's conditional numerical
  reproducibility in its COMPATIBLE branch, set before torch is imported (each library
  reads its variable once);
- fixes the thread count (a sum split over 2 threads is added in another order than
  over 1; the count is an argument of the command, never the machine's core count);
- flushes denormals to zero (MXCSR FTZ/DAZ, the same on every x86 CPU; Cydral's age
  network carries 6,667 denormal weights, which otherwise take the slow path: 6x);
- steps the optimiser with IEEE-exact operations only (`OneCycleAdamW`): the square root
  from numpy (the CPU's `sqrtps`, correctly rounded everywhere) instead of MKL's, the
  schedule's cosine from a series instead of libm (whose FMA variant may differ in the
  last bit), powers by repeated multiplication.

Checked with `tools/repro_check.sh`: the same run natively on an AVX-512 Xeon and under
QEMU as an SSE4.2 Nehalem and an AMD EPYC gives the same sha256 (docs/calibration.md
section 14). The cost is speed: a Cydral step takes about 4x, a face-api step 1.7x the
native kernels' time on the 2-core VM.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

# Read once by each library when it first runs a kernel: set before `import torch`.
PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
}


def pin_numerics(threads: int, portable: bool = True) -> None:
    """Make this process's PyTorch compute the same bits on any x86-64 CPU; with
    portable=False, only the thread count, determinism and flushing (the CPU's fastest
    kernels: the same bits on the same kind of CPU only)."""
    if portable:
        if "torch" in sys.modules:
            raise RuntimeError("pin_numerics must run before torch is imported")
        os.environ.update(PINNED_ENVIRONMENT)
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)


def numerics_report() -> dict:
    """What a training report records of the numerics it ran with."""
    import torch

    return {
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        **{k: os.environ.get(k) for k in PINNED_ENVIRONMENT},
    }


def cosine(x: float) -> float:
    """cos(x) for 0 <= x <= pi by its Taylor series: only IEEE-exact + * /, so the same
    bits on every CPU (libm's cos has an FMA variant chosen by the CPU)."""
    term, total, k = 1.0, 1.0, 0
    while abs(term) > 1e-18:
        k += 2
        term = -term * x * x / ((k - 1) * k)
        total += term
    return total


def power(base: float, n: int) -> float:
    """base ** n by repeated multiplication (libm's pow, like its cos, picks a variant)."""
    out = 1.0
    for _ in range(n):
        out *= base
    return out


def one_cycle(t: int, total: int, max_lr: float) -> tuple[float, float]:
    """(learning rate, beta1) at step t of total (0-based), as torch's OneCycleLR anneals
    them by default: 30 % of the steps from max_lr/25 up to max_lr while beta1 falls from
    0.95 to 0.85, then down to max_lr/25e4 while it climbs back, both on a cosine."""
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    peak = 0.3 * total - 1
    if t <= peak:
        phase, start, end, b_start, b_end = t / peak, initial, max_lr, 0.95, 0.85
    else:
        phase = (t - peak) / (total - 1 - peak)
        start, end, b_start, b_end = max_lr, final, 0.85, 0.95
    mix = (cosine(math.pi * min(phase, 1.0)) + 1) / 2  # math.pi is a constant, not libm
    return end + (start - end) * mix, b_end + (b_start - b_end) * mix


class OneCycleAdamW:
    """torch.optim.AdamW stepped by torch.optim.lr_scheduler.OneCycleLR's default policy
    (30 % warm-up from max_lr/25, cosine annealing to max_lr/25e4, beta1 cycled 0.95 ->
    0.85 -> 0.95), the same update, in operations whose results every CPU rounds alike."""

    def __init__(self, params: list, max_lr: float, total_steps: int, weight_decay: float):
        import torch

        self.params = [p for p in params if p.requires_grad]
        self.max_lr, self.total = max_lr, max(total_steps, 1)
        self.weight_decay, self.beta2, self.eps = weight_decay, 0.999, 1e-8
        self.t = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        lr, beta1 = one_cycle(self.t, self.total, self.max_lr)
        self.t += 1
        correction1 = 1 - power(beta1, self.t)
        correction2_root = math.sqrt(1 - power(self.beta2, self.t))  # IEEE sqrt: exact
        with torch.no_grad():
            for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
                if p.grad is None:
                    continue
                p.mul_(1 - lr * self.weight_decay)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
                # torch.sqrt is MKL's vector square root, off by an ulp in places, and in
                # other places on another CPU; numpy's is the CPU's correctly rounded one
                root = torch.from_numpy(np.sqrt(v.numpy()))
                p.addcdiv_(m, root.div_(correction2_root).add_(self.eps), value=-lr / correction1)
