"""FlashAttention-2 variable-length kernels behind one interface, for the varlen backend.

The flash-attn package is used when it is installed (its private ``_flash_attn_varlen_forward`` /
``_backward``, whose arguments changed in 2.7: ``window_size`` became ``window_size_left`` /
``window_size_right`` and the forward stopped returning the padded copies); otherwise PyTorch's
own FA2 kernels (``aten._flash_attention_forward/backward``), present in every CUDA build.

Shapes: packed ``q`` ``[Tq, 1, D]``, ``k``/``v`` ``[Tk, 1, D]``, ``cu_q``/``cu_k`` ``[G + 1]``
int32 segment offsets; the forward returns ``out`` ``[Tq, 1, D]`` and ``lse`` ``[1, Tq]``
float32. No dropout, not causal.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch

# Plain attention (no window, softcap or ALiBi) in the optional arguments of the flash-attn
# functions, by name; each call passes those its version has.
_PLAIN = {
    "window_size": (-1, -1),
    "window_size_left": -1,
    "window_size_right": -1,
    "softcap": 0.0,
    "alibi_slopes": None,
}


@dataclass(frozen=True)
class VarlenKernels:
    """``forward(q, k, v, cu_q, cu_k, max_q, max_k, scale) -> (out, lse)`` and
    ``backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale) -> (dq, dk, dv)``."""

    name: str
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _aten_forward(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    out, lse, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False, scale=scale
    )
    return out, lse


def _aten_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale):
    unused = torch.empty(0, device=q.device)  # the dropout RNG state; there is no dropout
    return torch.ops.aten._flash_attention_backward(
        dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, 0.0, False, unused, unused, scale=scale
    )


ATEN_KERNELS = VarlenKernels("aten", _aten_forward, _aten_backward)


def _supported(fn: Callable, options: dict) -> dict:
    # flash-attn >= 2.7 wraps these in torch.library custom ops, which keep the function in _init_fn
    params = inspect.signature(getattr(fn, "_init_fn", fn)).parameters
    return {name: value for name, value in options.items() if name in params}


def flash_attn_kernels(interface: ModuleType) -> VarlenKernels:
    """Kernels from a ``flash_attn.flash_attn_interface`` module (2.6 or >= 2.7 API)."""
    fwd, bwd = interface._flash_attn_varlen_forward, interface._flash_attn_varlen_backward
    fwd_options = _supported(fwd, {**_PLAIN, "return_softmax": False, "block_table": None})
    bwd_options = _supported(bwd, {**_PLAIN, "deterministic": False})
    if not ({"window_size", "window_size_left"} & fwd_options.keys()):
        raise ImportError("unsupported flash-attn API: _flash_attn_varlen_forward has no window_size")

    def forward(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        result = fwd(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, scale, False, **fwd_options)
        # 2.6: (out, q, k, v, out_padded, lse, S_dmask, rng_state); >= 2.7: (out, lse, S_dmask, rng_state)
        return result[0], result[5 if len(result) == 8 else 1]

    def backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bwd(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, 0.0, scale, False,
            **bwd_options)
        return dq, dk, dv

    return VarlenKernels("flash_attn", forward, backward)


@functools.lru_cache(maxsize=1)
def varlen_kernels() -> VarlenKernels:
    """flash-attn's kernels when the package imports, else PyTorch's."""
    try:
        from flash_attn import flash_attn_interface
    except ImportError:
        return ATEN_KERNELS
    return flash_attn_kernels(flash_attn_interface)
