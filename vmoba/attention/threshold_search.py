"""Threshold selection by searching for the cut-off gate instead of sorting the pool (CUDA).

The threshold rule (see :mod:`vmoba.attention.selection`) keeps, of each pool's other entries,
the ``c`` best, where ``c`` is the first rank whose descending prefix of ``g - low`` reaches a
target mass ``T``. Sorting finds it at the cost of a segmented sort of the whole pool (32-48 M
entries per layer at 55K tokens). The same cut-off is the largest gate ``v`` with

    F(v) = sum of (g - low) over other entries with g >= v,  F(v) >= T  (and some g >= v),

and ``F`` only falls as ``v`` grows, so ``v`` can be searched for. Gates are mapped to int32
keys in the same order (:func:`order_keys`); each pass evaluates ``F`` (and the entry count) at 16
keys spread over the remaining range, so 8 passes of one read each pin the exact key (16^8 =
2^32). Entries equal to the cut-off are kept in pool order, as the reference's stable sort does.
The masses are float64 sums in a different order from the reference's running sum; they can
only disagree when a prefix mass lands within rounding (~1e-16 relative) of ``T``.

``candidate_masses`` and ``keep_flags`` are Triton kernels on CUDA (registered with
``torch.library.triton_op``, so the compiled selection traces them); their torch versions (any
device) are what the kernels are tested against. A pass is bound by its ``[entries, 16]``
float64 accumulation rather than by memory (``eval/bench/threshold_search.py`` times it).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU-only installs: the torch version is used
    triton = None

CANDIDATES = 16
"""Keys evaluated per pass: 8 passes cover the 2^32 int32 keys."""
_PASSES = 8
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_FLIP = 0x7FFFFFFF


def order_keys(gates: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 keys with the same order (``-0.0`` and ``+0.0`` share key 0)."""
    bits = torch.where(gates == 0, 0.0, gates).view(torch.int32)
    return bits ^ ((bits >> 31) & _FLIP)


def key_values(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`order_keys`: int keys -> their float32 gates."""
    keys = keys.to(torch.int32)
    return (keys ^ ((keys >> 31) & _FLIP)).view(torch.float32)


def candidate_masses_torch(
    pools: torch.Tensor, is_self: torch.Tensor, low: torch.Tensor, cands: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F`` and entry counts at candidate keys, over the other (not self) entries.

    Args:
        pools: ``[P, M]`` float32 gates.
        is_self: ``[P, M]`` bool self flags.
        low: ``[P]`` float64 pool minimum.
        cands: ``[P, C]`` int32 candidate keys.

    Returns:
        ``[P, parts, C]`` float64 ``sum(g - low)`` and int64 count of other entries with
        key >= cand, per consecutive part of the pool (here one part; the kernel's parts vary).
    """
    at_or_above = (order_keys(pools)[:, :, None] >= cands[:, None, :]) & ~is_self[:, :, None]
    weight = pools.double() - low[:, None]
    mass = (at_or_above * weight[:, :, None]).sum(1)
    return mass[:, None], at_or_above.sum(1)[:, None]


def keep_flags_torch(
    pools: torch.Tensor,
    is_self: torch.Tensor,
    cut: torch.Tensor,
    kept_ties: torch.Tensor,
    keep_all: torch.Tensor,
    tie_offsets: torch.Tensor,
) -> torch.Tensor:
    """The keep mask given the cut-off: self entries, other entries above the cut-off key, the
    first ``kept_ties`` other entries at it (pool order), or every other entry where ``keep_all``.

    Args:
        pools, is_self: ``[P, M]``; cut: ``[P]`` int key; kept_ties: ``[P]`` int64;
        keep_all: ``[P]`` bool; tie_offsets: ``[P, parts]`` ties in the parts before each part
        (the kernel's; unused here, where the ranks come from one scan).
    """
    others = ~is_self
    keys = order_keys(pools)
    tie = others & (keys == cut[:, None])
    tie_rank = row_cumsum(tie.to(torch.int32))
    chosen = (keys > cut[:, None]) | (tie & (tie_rank <= kept_ties[:, None]))
    return is_self | (others & (chosen | keep_all[:, None]))


if triton is not None:

    @triton.jit
    def _order_keys(g):
        bits = tl.where(g == 0.0, 0.0, g).to(tl.int32, bitcast=True)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)

    @triton.jit
    def _load_entries(gates_ptr, self_ptr, self_pool_stride, pool, cols, entries):
        """Gates, their order keys, self flags and in-bounds flags of one pool's entries ``cols``."""
        valid = cols < entries
        g = tl.load(gates_ptr + pool.to(tl.int64) * entries + cols, mask=valid, other=0.0)
        is_self = tl.load(self_ptr + pool.to(tl.int64) * self_pool_stride + cols, mask=valid,
                          other=True) != 0
        return g, _order_keys(g), is_self, valid

    @triton.jit
    def _candidate_masses_kernel(
        gates_ptr, self_ptr, self_pool_stride, low_ptr, cands_ptr, mass_ptr, count_ptr,
        entries, chunk, parts,
        NUM_CANDS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pool = tl.program_id(0)
        part = tl.program_id(1)
        cands = tl.load(cands_ptr + pool * NUM_CANDS + tl.arange(0, NUM_CANDS))
        low = tl.load(low_ptr + pool)
        # per-lane accumulators, reduced once at the end
        mass = tl.zeros([BLOCK, NUM_CANDS], dtype=tl.float64)
        count = tl.zeros([BLOCK, NUM_CANDS], dtype=tl.int32)
        start = part * chunk
        for offset in range(start, start + chunk, BLOCK):
            g, keys, is_self, valid = _load_entries(
                gates_ptr, self_ptr, self_pool_stride, pool, offset + tl.arange(0, BLOCK), entries
            )
            hit = (keys[:, None] >= cands[None, :]) & (valid & ~is_self)[:, None]
            mass += tl.where(hit, (g.to(tl.float64) - low)[:, None], 0.0)
            count += hit.to(tl.int32)
        out = (pool * parts + part) * NUM_CANDS + tl.arange(0, NUM_CANDS)
        tl.store(mass_ptr + out, tl.sum(mass, axis=0))
        tl.store(count_ptr + out, tl.sum(count, axis=0))

    @triton.jit
    def _keep_flags_kernel(
        gates_ptr, self_ptr, self_pool_stride, cut_ptr, kept_ties_ptr, keep_all_ptr,
        tie_offsets_ptr, out_ptr, entries, chunk, parts,
        BLOCK: tl.constexpr,
    ):
        pool = tl.program_id(0)
        part = tl.program_id(1)
        cut = tl.load(cut_ptr + pool)
        kept_ties = tl.load(kept_ties_ptr + pool)
        keep_all = tl.load(keep_all_ptr + pool)
        ties_before = tl.load(tie_offsets_ptr + pool * parts + part)
        start = part * chunk
        for offset in range(start, start + chunk, BLOCK):
            cols = offset + tl.arange(0, BLOCK)
            _, keys, is_self, valid = _load_entries(
                gates_ptr, self_ptr, self_pool_stride, pool, cols, entries
            )
            others = valid & ~is_self
            tie = others & (keys == cut)
            rank = ties_before + tl.cumsum(tie.to(tl.int32), axis=0)
            chosen = (keys > cut) | (tie & (rank <= kept_ties)) | (keep_all != 0)
            keep = is_self | (others & chosen)
            tl.store(out_ptr + pool.to(tl.int64) * entries + cols, keep, mask=valid)
            ties_before += tl.sum(tie.to(tl.int32), axis=0)

    _BLOCK = 128
    _NUM_WARPS = 4

    def _split(num_pools: int, entries: int) -> tuple[int, int]:
        """Programs per pool (``parts``) and entries per program (a multiple of ``_BLOCK``)."""
        parts = max(1, min(triton.cdiv(entries, 32 * _BLOCK), triton.cdiv(4096, num_pools)))
        return parts, triton.cdiv(triton.cdiv(entries, parts), _BLOCK) * _BLOCK

    @triton_op("vmoba::candidate_masses", mutates_args={})
    def _candidate_masses_cuda(
        pools: torch.Tensor, is_self: torch.Tensor, low: torch.Tensor, cands: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_pools, entries = pools.shape
        parts, chunk = _split(num_pools, entries)
        mass = pools.new_empty((num_pools, parts, CANDIDATES), dtype=torch.float64)
        count = pools.new_empty((num_pools, parts, CANDIDATES), dtype=torch.int32)
        wrap_triton(_candidate_masses_kernel)[(num_pools, parts)](
            pools, is_self, is_self.stride(0), low, cands, mass, count,
            entries, chunk, parts, NUM_CANDS=CANDIDATES, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
        )
        return mass, count

    @triton_op("vmoba::keep_flags", mutates_args={})
    def _keep_flags_cuda(
        pools: torch.Tensor,
        is_self: torch.Tensor,
        cut: torch.Tensor,
        kept_ties: torch.Tensor,
        keep_all: torch.Tensor,
        tie_offsets: torch.Tensor,
    ) -> torch.Tensor:
        num_pools, entries = pools.shape
        parts, chunk = _split(num_pools, entries)
        keep = torch.empty_like(pools, dtype=torch.bool)
        wrap_triton(_keep_flags_kernel)[(num_pools, parts)](
            pools, is_self, is_self.stride(0), cut, kept_ties, keep_all, tie_offsets, keep,
            entries, chunk, parts, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
        )
        return keep


def search_available(pools: torch.Tensor) -> bool:
    """Whether the search runs its Triton kernels for these pools (else their torch versions)."""
    return triton is not None and pools.is_cuda


def candidate_masses(pools, is_self, low, cands) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`candidate_masses_torch`, by a Triton kernel on CUDA (one part per program).

    ``is_self`` may broadcast over pools (stride 0), as the self mask of ``head_global`` pools does.
    """
    if search_available(pools):
        return _candidate_masses_cuda(pools.contiguous(), is_self, low, cands.contiguous())
    return candidate_masses_torch(pools, is_self, low, cands)


def keep_flags(pools, is_self, cut, kept_ties, keep_all, tie_offsets) -> torch.Tensor:
    """:func:`keep_flags_torch`, by a Triton kernel on CUDA (one pass, no scan of the pool)."""
    if search_available(pools):
        return _keep_flags_cuda(pools.contiguous(), is_self, cut, kept_ties, keep_all, tie_offsets)
    return keep_flags_torch(pools, is_self, cut, kept_ties, keep_all, tie_offsets)


def row_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Cumulative sums along the rows of ``[P, M]`` as one flat scan minus each row's offset
    (GPU scans of a few long rows run a block per row and are slow). Integers sum in int64."""
    dtype = torch.int64 if not x.is_floating_point() else None
    flat = x.reshape(-1).cumsum(0, dtype=dtype).view(x.shape)
    return flat - (flat[:, :1] - x[:, :1])


def search_keep(
    pools: torch.Tensor, is_self: torch.Tensor, low: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Keep flags of the threshold rule, found by search (equal to ranking by a stable sort).

    Args:
        pools: ``[P, M]`` float32 gates.
        is_self: ``[P, M]`` bool self flags (kept always, never counted).
        low: ``[P]`` float64 pool minimum; ``target``: ``[P]`` float64 mass ``T`` (un-normalised).

    Returns:
        ``[P, M]`` bool.
    """
    num_pools = pools.shape[0]
    steps = torch.arange(CANDIDATES, device=pools.device)
    lo = torch.full((num_pools,), _INT32_MIN, dtype=torch.int64, device=pools.device)
    hi = torch.full_like(lo, _INT32_MAX)
    keep_all = None
    for _ in range(_PASSES):  # invariant: F(lo) >= T, the cut-off key lies in [lo, hi]
        step = (hi - lo) // CANDIDATES + 1
        cands = torch.minimum(lo[:, None] + step[:, None] * steps, hi[:, None])
        mass, count = (x.sum(1) for x in candidate_masses(pools, is_self, low, cands.int()))
        reached = (mass >= target[:, None]) & (count > 0)  # T <= 0: the best entry's key
        if keep_all is None:  # F at the smallest key is every other entry's mass
            keep_all = ~reached[:, 0]
        best = (reached.sum(-1) - 1).clamp_min(0)
        nxt = (best + 1).clamp_max(CANDIDATES - 1)
        lo_next = cands.gather(1, best[:, None]).squeeze(1)
        above = cands.gather(1, nxt[:, None]).squeeze(1)
        hi = torch.where(best == CANDIDATES - 1, hi, above - 1)
        lo = lo_next
    cut = lo
    cands = torch.stack([cut, (cut + 1).clamp_max(_INT32_MAX)], 1).repeat(1, CANDIDATES // 2)
    mass, count = candidate_masses(pools, is_self, low, cands.int())  # [P, parts, C]
    part_ties = (count[..., 0] - count[..., 1]).long()
    mass_above, ties = mass[..., 1].sum(1), part_ties.sum(1)
    cut_weight = key_values(cut).double() - low
    # the first tie whose running mass reaches T is the last one kept (at least one); a cut-off
    # of weight 0 can only be reached with T <= 0, by the first tie
    positive = cut_weight > 0
    needed = torch.ceil((target - mass_above) / torch.where(positive, cut_weight, 1.0))
    kept_ties = torch.where(positive, needed, 1.0).clamp_min(1.0).minimum(ties.double()).long()
    tie_offsets = part_ties.cumsum(1) - part_ties
    return keep_flags(pools, is_self, cut.int(), kept_ties, keep_all, tie_offsets)
