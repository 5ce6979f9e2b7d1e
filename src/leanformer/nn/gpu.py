"""Facts about the device that kernels size their launch grids by."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 for the CPU, where Triton kernels run in the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def fix_interpreter_bf16_dot() -> None:
    """Under ``TRITON_INTERPRET=1`` (the kernels run on the CPU), make ``tl.dot`` of bfloat16 operands multiply
    their values. Triton's interpreter (3.6 to 3.9) keeps bfloat16 tensors as their uint16 bit patterns and its dot
    multiplies those integers: a 16 x 16 product of unit normals comes out ~1e10 off, so a bf16 kernel checked on
    the CPU would be checked against garbage. Here bfloat16 operands are widened to fp32 (exactly) before the
    interpreter's product. Once per process; nothing without triton or outside the interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "widens_bf16", False):
        return
    dot = builder.create_dot

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args, **kwargs):
        return dot(self, widen(a), widen(b), d, *args, **kwargs)

    create_dot.widens_bf16 = True
    builder.create_dot = create_dot
