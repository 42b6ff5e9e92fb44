"""Every Triton kernel compiles for Hopper (``sm_90``) at the launch shapes it runs with, here on
the CPU: Triton's front end and its bundled ``ptxas`` need no GPU. Triton's interpreter runs the
kernels as Python and accepts code that the compiler rejects (an ``if`` block that redefines a
value with another shape, say), so this catches what the interpreted tests cannot, before any
GPU time is spent. Skipped where Triton lacks its CUDA back end."""

import pytest

triton = pytest.importorskip("triton")
compiler = pytest.importorskip("triton.compiler")
nvidia = pytest.importorskip("triton.backends.nvidia")

from triton.backends.compiler import GPUTarget  # noqa: E402

from vmoba.attention import indexed, segment_merge, threshold_search  # noqa: E402
from vmoba.attention.tuning import Tiles  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
DIM = 128


def _compile(kernel, types: dict[str, str], constants: dict[str, int], warps: int, stages=3):
    """Compile ``kernel`` for ``sm_90``: ``types`` of its runtime arguments, ``constants`` its
    ``tl.constexpr`` values. Returns the compiled kernel (its ``asm`` holds the cubin)."""
    signature = {**types, **{name: "constexpr" for name in constants}}
    source = compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=HOPPER, options={"num_warps": warps, "num_stages": stages})


def _indexed_cases():
    t = Tiles()
    ints = "*i32"
    for dtype in ("bf16", "fp16"):
        def desc(step):
            return f"tensordesc<{dtype}[{step}, {DIM}]>"

        yield f"forward-{dtype}", indexed._forward_kernel, {
            "q_ptr": f"*{dtype}", "k_desc": desc(t.forward.step), "v_desc": desc(t.forward.step),
            "token_ptr": ints, "cu_q_ptr": ints, "cu_k_ptr": ints, "tile_seg_ptr": ints,
            "tile_start_ptr": ints, "out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "tile0": "i32",
            "row0": "i32", "scale": "fp32",
        }, {"DIM": DIM, "BLOCK_Q": t.forward.tile, "BLOCK_K": t.forward.step}, t.forward
        yield f"dq-{dtype}", indexed._dq_kernel, {
            "q_ptr": f"*{dtype}", "k_desc": desc(t.dq.step), "v_desc": desc(t.dq.step),
            "grad_ptr": f"*{dtype}", "lse_ptr": "*fp32", "delta_ptr": "*fp32", "token_ptr": ints,
            "query_ptr": ints, "cu_q_ptr": ints, "cu_k_ptr": ints, "tile_seg_ptr": ints,
            "tile_start_ptr": ints, "dq_ptr": "*fp32", "tile0": "i32", "row0": "i32",
            "scale": "fp32",
        }, {"DIM": DIM, "BLOCK_Q": t.dq.tile, "BLOCK_K": t.dq.step}, t.dq
        yield f"dkdv-{dtype}", indexed._dkdv_kernel, {
            "q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}",
            "grad_ptr": f"*{dtype}", "lse_ptr": "*fp32", "delta_ptr": "*fp32", "token_ptr": ints,
            "query_ptr": ints, "key_ptr": "*i64", "cu_q_ptr": ints, "cu_k_ptr": ints,
            "tile_seg_ptr": ints, "tile_start_ptr": ints, "dk_ptr": f"*{dtype}",
            "dv_ptr": f"*{dtype}", "scale": "fp32",
        }, {"DIM": DIM, "BLOCK_Q": t.dkdv.step, "BLOCK_K": t.dkdv.tile}, t.dkdv


@pytest.mark.parametrize(
    "kernel,types,constants,loop", [pytest.param(*case[1:], id=case[0]) for case in _indexed_cases()]
)
def test_indexed_kernels_compile_for_hopper(kernel, types, constants, loop):
    assert "cubin" in _compile(kernel, types, constants, loop.warps, loop.stages).asm


@pytest.mark.parametrize("by_lse,dtype", [(True, "bf16"), (True, "fp16"), (False, "fp32")])
def test_merge_kernel_compiles_for_hopper(by_lse, dtype):
    types = {
        "x_ptr": f"*{dtype}", "lse_ptr": "*fp32", "order_ptr": "*i32", "starts_ptr": "*i32",
        "out_ptr": "*fp32", "out_lse_ptr": "*fp32", "total": "i32", "dim": "i32",
    }
    constants = {"ROWS": segment_merge._ROWS, "BLOCK_D": DIM, "BY_LSE": by_lse}
    assert "cubin" in _compile(
        segment_merge._reduce_rows_kernel, types, constants, segment_merge._NUM_WARPS
    ).asm


def test_threshold_search_kernels_compile_for_hopper():
    ts = threshold_search
    pool = {"gates_ptr": "*fp32", "self_ptr": "*i1", "self_pool_stride": "i32"}
    split = {"entries": "i32", "chunk": "i32", "parts": "i32"}
    masses = _compile(ts._candidate_masses_kernel, {
        **pool, "low_ptr": "*fp64", "cands_ptr": "*i32", "mass_ptr": "*fp64", "count_ptr": "*i32",
        **split,
    }, {"NUM_CANDS": ts.CANDIDATES, "BLOCK": ts._BLOCK}, ts._NUM_WARPS)
    flags = _compile(ts._keep_flags_kernel, {
        **pool, "cut_ptr": "*i32", "kept_ties_ptr": "*i64", "keep_all_ptr": "*i1",
        "tie_offsets_ptr": "*i64", "out_ptr": "*i1", **split,
    }, {"BLOCK": ts._BLOCK}, ts._NUM_WARPS)
    assert "cubin" in masses.asm and "cubin" in flags.asm
