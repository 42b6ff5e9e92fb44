"""The one registry of attention backends, chosen by name.

A backend computes masked attention from a block keep mask: ``attend(q, k, v, keep, partition)``
with ``q, k, v`` ``[B, S, H, D]`` and ``keep`` ``[B, H, S, N]``, returning ``[B, S, H, D]``. Adding a
backend is one :func:`register_backend` call; ``"auto"`` takes the highest-priority backend that
supports the device and dtype of the inputs.

=========== ========= ============================================================
name        priority  when ``auto`` picks it
=========== ========= ============================================================
indexed     40        Hopper (or newer) GPUs, float16/bfloat16, head dim a power of two from 16
                      to 128, Triton with tensor descriptors (Triton kernels reading rows by
                      index; on the H200 the fastest forward+backward at 13K-55K tokens and
                      forward from 32K, ``eval/results/attention_h200.md``)
varlen      30        other CUDA float16/bfloat16, head dim a multiple of 8 up to 256 (FA2 kernels)
gathered    20        CPU tensors (work and memory scale with the kept density)
chunked     10        other devices (memory-safe dense-masked chunks, no S x S tensor)
flex        5         never while chunked runs everywhere: opt-in until benchmarked (FlexAttention)
reference   0         never (the plain ground truth; memory grows as S^2)
=========== ========= ============================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from vmoba.attention.chunked import chunked_attention
from vmoba.attention.flex import flex_attention
from vmoba.attention.gathered import gathered_attention
from vmoba.attention import indexed
from vmoba.attention.indexed import indexed_attention
from vmoba.attention.partition import BlockPartition
from vmoba.attention.reference import reference_attention
from vmoba.attention.varlen import varlen_attention

log = logging.getLogger(__name__)

AttendFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, BlockPartition], torch.Tensor
]


def _any_input(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """An attention implementation and the inputs it can take.

    Args:
        name: the name users pass as ``backend=``.
        attend: the masked attention function (see the module docstring).
        priority: ``auto`` prefers higher numbers.
        supports: ``(device, dtype, head_dim) -> bool``; an explicit choice that does not support
            the inputs raises instead of being replaced.
    """

    name: str
    attend: AttendFn
    priority: int
    supports: Callable[[torch.device, torch.dtype, int], bool] = _any_input


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add ``backend`` to the registry (a name can be registered once)."""
    if backend.name in _BACKENDS or backend.name == "auto":
        raise ValueError(f"backend name {backend.name!r} is taken")
    _BACKENDS[backend.name] = backend


def backend_names() -> tuple[str, ...]:
    """Names accepted as ``backend=``, ``"auto"`` first."""
    return ("auto", *sorted(_BACKENDS))


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> Backend:
    """The backend called ``name``, or for ``"auto"`` the best one for these inputs."""
    if name == "auto":
        usable = [b for b in _BACKENDS.values() if b.supports(device, dtype, head_dim)]
        choice = max(usable, key=lambda b: b.priority)
        log.debug("vmoba backend auto -> %s for %s %s", choice.name, device, dtype)
        return choice
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")
    backend = _BACKENDS[name]
    if not backend.supports(device, dtype, head_dim):
        raise ValueError(
            f"backend {name!r} does not support {dtype} tensors of head dim {head_dim} on {device}"
        )
    return backend


def _cpu(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    return device.type == "cpu"


def _cuda_half(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    half = dtype in (torch.float16, torch.bfloat16)
    return device.type == "cuda" and half and head_dim % 8 == 0 and head_dim <= 256


def _flex(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    if device.type == "cpu":  # eager and forward only: for tests and debugging
        return dtype in (torch.float32, torch.float64)
    flex_dtype = dtype in (torch.float16, torch.bfloat16, torch.float32)
    power_of_two = head_dim & (head_dim - 1) == 0
    return device.type == "cuda" and flex_dtype and power_of_two and 16 <= head_dim <= 256


def _indexed(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    power_of_two = head_dim & (head_dim - 1) == 0
    half = dtype in (torch.float16, torch.bfloat16)
    return half and power_of_two and 16 <= head_dim <= 128 and indexed.available_on(device)


register_backend(Backend("reference", reference_attention, priority=0))
register_backend(Backend("indexed", indexed_attention, priority=40, supports=_indexed))
register_backend(Backend("flex", flex_attention, priority=5, supports=_flex))
register_backend(Backend("chunked", chunked_attention, priority=10))
register_backend(Backend("gathered", gathered_attention, priority=20, supports=_cpu))
register_backend(Backend("varlen", varlen_attention, priority=30, supports=_cuda_half))
