"""The one registry of attention backends, chosen by name.

A backend computes masked attention from a block keep mask:
``attend(q, k, v, keep, partition, tuning)`` with ``q, k, v`` ``[B, S, H, D]`` and ``keep``
``[B, H, S, N]``, returning ``[B, S, H, D]``; ``tuning`` carries the packed backends' bounds and
launch shapes. Adding a backend is one :func:`register_backend` call; ``"auto"`` takes the
highest-priority backend that supports the device, dtype and head dim of the inputs (logged at
debug level), and an explicit name is never replaced.

=========== ========= ============================================================
name        priority  when ``auto`` picks it
=========== ========= ============================================================
indexed     40        Hopper (or newer) GPUs, float16/bfloat16, head dim a power of two from 16
                      to 128, Triton with tensor descriptors: Triton kernels that read rows by
                      index, the fastest forward+backward measured
                      (``eval/results/attention_h200.md``)
varlen      30        other CUDA float16/bfloat16, head dim a multiple of 8 up to 256
                      (FlashAttention-2 varlen kernels)
gathered    10        everything else: the CPU, CUDA float32/float64 and head dims the kernels
                      do not take. Work and memory follow the kept density, but its loop over
                      (sample, head, block) syncs with the host each step, which suits the CPU
                      and is slow on a GPU
flex        never     chosen by name only: the one backend that traces in a
                      ``torch.compile(fullgraph=True)`` graph, selection included. Its work
                      follows the per-tile union of the selection, dense on inputs whose
                      neighbouring queries choose different blocks; there it ran slower than
                      dense attention (``eval/results/attention_h200_flex.json``)
reference   never     the plain ground truth every backend is tested against; memory grows as
                      ``B * H * S^2``
=========== ========= ============================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from vmoba.attention import indexed
from vmoba.attention.flex import flex_attention
from vmoba.attention.gathered import gathered_attention
from vmoba.attention.indexed import indexed_attention
from vmoba.attention.partition import BlockPartition
from vmoba.attention.reference import reference_attention
from vmoba.attention.tuning import Tuning
from vmoba.attention.varlen import varlen_attention

log = logging.getLogger(__name__)

AttendFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, BlockPartition, Tuning],
    torch.Tensor,
]
UntunedAttendFn = Callable[
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
        priority: ``auto`` prefers higher numbers; ``None``: chosen by name only.
        supports: ``(device, dtype, head_dim) -> bool``; an explicit choice that does not support
            the inputs raises instead of being replaced.
    """

    name: str
    attend: AttendFn
    priority: Optional[int]
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


def check_backend_name(name: str) -> None:
    """Raise unless ``name`` is ``"auto"`` or a registered backend, naming the valid ones."""
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> Backend:
    """The backend called ``name``, or for ``"auto"`` the best one for these inputs."""
    check_backend_name(name)
    if name == "auto":
        usable = [
            b for b in _BACKENDS.values()
            if b.priority is not None and b.supports(device, dtype, head_dim)
        ]
        choice = max(usable, key=lambda b: b.priority)
        log.debug("vmoba backend auto -> %s for %s %s", choice.name, device, dtype)
        return choice
    backend = _BACKENDS[name]
    if not backend.supports(device, dtype, head_dim):
        raise ValueError(
            f"backend {name!r} does not support {dtype} tensors of head dim {head_dim} on {device}"
        )
    return backend


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


def _untuned(attend: UntunedAttendFn) -> AttendFn:
    """``attend`` in the registry's signature, for a backend that has no knobs."""

    def run(q, k, v, keep, partition, tuning):
        return attend(q, k, v, keep, partition)

    return run


register_backend(Backend("indexed", indexed_attention, priority=40, supports=_indexed))
register_backend(Backend("varlen", varlen_attention, priority=30, supports=_cuda_half))
register_backend(Backend("gathered", _untuned(gathered_attention), priority=10))
register_backend(Backend("flex", _untuned(flex_attention), priority=None, supports=_flex))
register_backend(Backend("reference", _untuned(reference_attention), priority=None))
