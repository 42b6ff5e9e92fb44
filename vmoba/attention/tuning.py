"""Performance knobs of selection and the packed backends, as one frozen value passed down.

None of them changes a result: each trades memory, launches or host work for speed, and the
tests run small values to exercise the paths that long videos take. A caller (a test, the
tuner ``eval/bench/tune_indexed.py``) passes its own :class:`Tuning`; everything else uses
:data:`DEFAULT_TUNING`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loop:
    """One Triton kernel's launch shape: ``tile`` rows per program (queries in the forward and
    dq, keys in dk/dv), ``step`` rows per iteration of its inner loop (keys in the forward and
    dq, queries in dk/dv), ``warps`` per program, ``stages`` of software pipelining of its loads."""

    tile: int
    step: int
    warps: int
    stages: int


@dataclass(frozen=True)
class Tiles:
    """Launch shapes of the ``indexed`` backend's three kernels (``eval/bench/tune_indexed.py`` times
    alternatives). The forward runs fastest on one-warpgroup 64-query tiles, dq on
    two-warpgroup 128-query tiles; every tile and step is a power of two of at least 16."""

    forward: Loop = Loop(64, 64, 4, 3)
    dkdv: Loop = Loop(64, 64, 4, 3)
    dq: Loop = Loop(128, 32, 8, 3)


@dataclass(frozen=True)
class Tuning:
    """Knobs of :func:`vmoba.attention.vmoba_attention`, its selection and its packed backends.

    Attributes:
        compile_selection: run gates and selection on CUDA through ``torch.compile`` (one graph
            per shape and rule). It fuses the selection's ~60 small operations, which otherwise
            cost more in launches than in math at short lengths.
        selection_entries: gate entries (``B * heads * S * N``) that gates and selection hold at
            once. With blocks of a fixed size ``N`` grows with ``S``, so a layer's entries grow
            as ``S^2`` (5.4e9 for a 3D layer at 589,824 tokens, whose 8-byte temporaries alone
            take 40.5 GiB). Above this many, scopes whose pools stay inside one head select in
            groups of heads: the same mask, temporaries bounded by the group.
        pool_entries: pool entries ranked at once by the sort: whole pools are processed in
            groups of about this many entries, bounding the ranking's temporaries (~40 bytes an
            entry) to ~0.3 GiB unless one pool is larger.
        search_min_entries: threshold pools at least this large are searched
            (:mod:`vmoba.attention.threshold_search`) on CUDA instead of sorted. On an H200 the
            search's 9 passes cost more than the sort below ~320K entries a pool and less above
            ~440K (``eval/bench/threshold_search.py`` measures both).
        row_budget: packed query rows plus key rows per chunk of the ``varlen`` and ``indexed``
            backends. The ``varlen`` backward of a chunk holds about ``12 * D`` bytes per query
            row and ``8 * D`` per key row: at most 0.75 GiB at D = 128. Keys count because 1D
            layers' large blocks put ~300K key rows beside 2^19 query rows. Smaller budgets
            save memory but cut the backward kernels' parallelism.
        plan_entries: keep-mask entries whose packed rows the segment plan finds at once. Its
            int64 temporaries take ~16 bytes per kept entry, and kept entries grow as ``S^2``
            (1.1e9 for a 3D layer at 589,824 tokens); in groups of (sample, head) pairs they
            stay bounded, and only the plan's own rows are as large.
        tiles: launch shapes of the ``indexed`` backend's kernels.
    """

    compile_selection: bool = True
    selection_entries: int = 1 << 28
    pool_entries: int = 1 << 23
    search_min_entries: int = 393_216
    row_budget: int = 1 << 19
    plan_entries: int = 1 << 28
    tiles: Tiles = field(default_factory=Tiles)


DEFAULT_TUNING = Tuning()
