"""Selection: which (query, block) pairs each query attends to, per sample and head.

Every rule keeps the query's own block (its *self block*) and then the best other entries of a
*pool* of (head, query, block) gate entries:

- ``topk``: each pool keeps its self entries plus ``(k - 1)`` other entries per self entry, by gate.
  ``query_head`` pools are one (head, query); ``head_global`` one head; ``overall`` one sample.
- ``threshold``: gates are min-max normalised inside the pool; the pool keeps the shortest prefix of
  its other entries, best first, that lifts the kept share of the normalised mass to ``tau``, and
  always at least one. Pools: ``query_head``, ``head_global``, ``overall`` as above, and ``block``:
  one block over all (head, query) of a sample.

Pools never span samples, so each sample's selection is independent of the rest of the batch.
The rule's sums run in float64 so that ``tau = 1`` keeps everything despite the 1e-6 guards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from vmoba.attention.partition import BlockPartition
from vmoba.attention.threshold_search import row_cumsum, search_available, search_keep
from vmoba.attention.tuning import DEFAULT_TUNING, Tuning

Select = Literal["topk", "threshold"]
Scope = Literal["query_head", "head_global", "block", "overall"]
SELECTS: tuple[Select, ...] = ("topk", "threshold")
SCOPES: tuple[Scope, ...] = ("query_head", "head_global", "block", "overall")
TOPK_SCOPES: tuple[Scope, ...] = ("query_head", "head_global", "overall")
HEAD_LOCAL_SCOPES: tuple[Scope, ...] = ("query_head", "head_global")
"""Scopes whose pools stay inside one head: selecting heads apart (in groups, or on the ranks of
a sequence-parallel group) gives the same mask. ``block`` pools span every head of a sample's
block and ``overall`` pools every head of a sample."""

_RANGE_EPS = 1e-6  # below this max - min, min-max normalisation divides by 1
_TOTAL_EPS = 1e-6  # added to the pool's total mass, as in the released code


@dataclass(frozen=True)
class SelectionConfig:
    """A validated selection rule (see the module docstring).

    Args:
        select: ``"topk"`` or ``"threshold"``.
        scope: ``"query_head"``, ``"head_global"``, ``"block"`` or ``"overall"`` (top-k: not block).
        threshold: ``tau`` in ``[0, 1]``, used by ``select="threshold"``.
        topk: ``k >= 1`` blocks per query, self block included; required by ``select="topk"``.
    """

    select: Select = "threshold"
    scope: Scope = "head_global"
    threshold: float = 0.25
    topk: Optional[int] = None

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise ValueError(f"select must be one of {SELECTS}, got {self.select!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.select == "topk":
            if self.scope not in TOPK_SCOPES:
                raise ValueError(
                    f"scope must be one of {TOPK_SCOPES} with select='topk', got {self.scope!r}"
                )
            k = self.topk
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"topk must be an int >= 1 with select='topk', got {k!r}")
        elif not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {self.threshold!r}")


def self_block_mask(partition: BlockPartition, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[S, N]`` bool, true where block ``j`` contains query ``s``."""
    index = partition.on(device).block_index
    return index[:, None] == torch.arange(partition.num_blocks, device=device)


def to_pools(x: torch.Tensor, scope: Scope) -> torch.Tensor:
    """``[B, H, S, N]`` -> ``[pools, entries]`` for the scope."""
    b, h, s, n = x.shape
    if scope == "query_head":
        return x.reshape(b * h * s, n)
    if scope == "head_global":
        return x.reshape(b * h, s * n)
    if scope == "overall":
        return x.reshape(b, h * s * n)
    return x.permute(0, 3, 1, 2).reshape(b * n, h * s)


def from_pools(x: torch.Tensor, scope: Scope, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_pools`: ``[pools, entries]`` -> ``shape`` ``[B, H, S, N]``."""
    b, h, s, n = shape
    if scope == "block":
        return x.reshape(b, n, h, s).permute(0, 2, 3, 1)
    return x.reshape(b, h, s, n)


def _threshold_target(
    gates: torch.Tensor, is_self: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool minimum ``low`` and the mass ``T`` the kept other entries must reach, ``[P]`` float64.

    Works on un-normalised gates: ``sum((g - low) / span) < x`` is ``sum(g - low) < x * span``,
    so ``T`` is in units of ``g - low``. Sums run in float64 (min and max are exact).

    Args:
        gates, is_self: ``[P, M]`` pool entries and their self flags.
    """
    low = gates.amin(-1).double()
    span = gates.amax(-1).double() - low
    span = torch.where(span <= _RANGE_EPS, torch.ones_like(span), span)
    total = (gates.sum(-1, dtype=torch.float64) - gates.shape[-1] * low) / span + _TOTAL_EPS
    self_gates = torch.where(is_self, gates, 0.0).sum(-1, dtype=torch.float64)
    self_mass = (self_gates - is_self.sum(-1) * low) / span
    needed = (tau - self_mass / total).clamp_min(0.0)
    return low, needed * total * span


def _threshold_counts(
    gates: torch.Tensor, is_self: torch.Tensor, ranked: torch.Tensor, tau: float
) -> torch.Tensor:
    """Other entries to keep per pool: the shortest prefix of ``ranked`` reaching ``tau``.

    Args:
        gates, is_self: ``[P, M]`` pool entries and their self flags.
        ranked: ``[P, M]`` gates of the other entries, descending, then ``-inf`` for self entries.
    """
    low, target = _threshold_target(gates, is_self, tau)
    others = ~torch.isinf(ranked)
    mass = row_cumsum(torch.where(others, ranked.double() - low[:, None], 0.0))
    short = (mass < target[:, None]) & others  # prefixes short of the target
    return short.sum(-1) + 1


def _searches(pools: torch.Tensor, config: SelectionConfig, tuning: Tuning) -> bool:
    return (
        config.select == "threshold"
        and search_available(pools)
        and pools.dtype == torch.float32
        and pools.shape[-1] >= tuning.search_min_entries
    )


@torch.no_grad()
def select_blocks(
    gates: torch.Tensor,
    partition: BlockPartition,
    config: SelectionConfig,
    tuning: Tuning = DEFAULT_TUNING,
) -> torch.Tensor:
    """The keep mask of ``config``'s rule: pools ranked by a stable sort, in groups of
    ``tuning.pool_entries`` entries, or (threshold pools of at least
    ``tuning.search_min_entries`` on CUDA) by :func:`~vmoba.attention.threshold_search.search_keep`.
    :func:`vmoba.attention.reference.reference_select_blocks` states the same rule plainly.

    Args:
        gates: ``[B, H, S, N]`` block gates (see :func:`vmoba.attention.gates.block_gates`).
        partition: the partition the gates were computed for.
        config: the selection rule.
        tuning: the bounds above (none changes the mask).

    Returns:
        ``[B, H, S, N]`` bool: query ``s`` of head ``h`` in sample ``b`` attends block ``j``.
    """
    shape = gates.shape
    is_self = to_pools(self_block_mask(partition, gates.device).expand(shape), config.scope)
    pools = to_pools(gates, config.scope)
    if _searches(pools, config, tuning):  # no sort: a few reads of the gates, bounded temporaries
        low, target = _threshold_target(pools, is_self, float(config.threshold))
        return from_pools(search_keep(pools, is_self, low, target), config.scope, shape)
    chosen = torch.empty_like(is_self)
    step = max(1, tuning.pool_entries // pools.shape[1])  # static bounds: no host sync
    for start in range(0, pools.shape[0], step):
        rows = slice(start, start + step)
        chosen[rows] = _select_in_pools(pools[rows], is_self[rows], config)
    return from_pools(chosen, config.scope, shape)


def _select_in_pools(pools: torch.Tensor, is_self: torch.Tensor, config: SelectionConfig):
    """``[P, M]`` gates and self flags of ``P`` pools -> ``[P, M]`` bool keep flags."""
    # Ranking in the gates' own dtype gives the float64 order (the upcast is exact and monotone).
    ranked, order = pools.masked_fill(is_self, float("-inf")).sort(
        dim=-1, descending=True, stable=True
    )
    num_self = is_self.sum(-1)
    if config.select == "topk":
        counts = (config.topk - 1) * num_self
    else:
        counts = _threshold_counts(pools, is_self, ranked, float(config.threshold))
    counts = torch.minimum(counts, is_self.shape[-1] - num_self)
    ranks = torch.arange(is_self.shape[-1], device=pools.device)
    return torch.zeros_like(is_self).scatter_(-1, order, ranks < counts[:, None]) | is_self


def token_mask(keep: torch.Tensor, partition: BlockPartition) -> torch.Tensor:
    """Expand a block keep mask ``[B, H, S, N]`` to a token mask ``[B, H, S, S]`` (query, key)."""
    return keep[..., partition.on(keep.device).block_index]


def kept_density(keep: torch.Tensor, partition: BlockPartition) -> torch.Tensor:
    """Fraction of (query, key) pairs attended, over all samples and heads (0-dim float64)."""
    sizes = partition.on(keep.device).block_sizes.double()
    b, h, s, _ = keep.shape
    kept_per_block = keep.sum((0, 1, 2)).to(torch.float64)  # [N], without a float copy of keep
    return (kept_per_block @ sizes) / (b * h * s * s)
