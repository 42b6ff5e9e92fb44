"""Forward FLOPs of Wan 2.1 1.3B with full or VMoBA self-attention, the model of the paper's tables.

    python -m eval.flops --tokens 55296 --attention vmoba --blocks 8 48 72 --density 0.19

Per layer, with S video tokens, width d, FFN width f and L text tokens (the VMoBA spec, section 7):
self-attention projections (q, k, v, out), self-attention (dense, or block-sparse with a mean-key
gate), cross-attention to the text, and the FFN. Only matrix products count (2 FLOPs per
multiply-add); norms, softmax, RoPE and the timestep MLP are left out (the paper's numbers imply
the same).

How close this is to the paper (every FLOPs cell of Tables 1, 2 and 5, ``tests/test_flops.py``):
all cells agree within 0.2% (sparse baselines priced like VMoBA at their Sparsity with the setting's
blocks, see ``eval/paper_tables.py``) except two groups at 81x480x832 (32,760 tokens):
- the full-attention cells (Table 1 FullAttn, Table 5 Pretrained and FullAttn): paper 282.64T,
  this model 281.64T (-0.35%); the paper's own 0.50-sparsity rows at that size (182.73T) agree with
  281.64T, so the paper's 282.64T looks like a one-digit slip;
- the VMoBA cells (both 149.00T): this model gives 145.25T at density 0.31 with 7/24/72 blocks
  (Table 1, -2.5%) and 121.51T at density 0.19 (Table 5, -18.4%). With 7/24/72 blocks, 149.00T
  needs density 0.329, which is neither row's Sparsity; the paper likely reused one number for both.
"""

from __future__ import annotations

import argparse
from numbers import Real

ATTENTIONS = ("full", "vmoba")
LAYER_KINDS = ("1d", "2d", "3d")


def projection_flops(tokens: int, dim: int) -> float:
    """Self-attention q, k, v and output projections: 4 x 2*S*d*d."""
    return 4 * 2 * tokens * dim * dim


def dense_attention_flops(tokens: int, dim: int) -> float:
    """Dense self-attention over all heads: 2*S*S*d for Q K^T plus 2*S*S*d for P V."""
    return 2 * tokens * tokens * dim + 2 * tokens * tokens * dim


def block_sparse_attention_flops(tokens: int, dim: int, n_blocks: int, density: float) -> float:
    """Block-sparse self-attention: the gate against every block's mean key, then Q K^T and P V
    over the k = density * n_blocks kept blocks of c = S / n_blocks tokens each."""
    block_size = tokens / n_blocks
    kept = density * n_blocks
    gate = 2 * tokens * dim * (tokens / block_size)
    qk = 2 * tokens * dim * (block_size * kept)
    pv = 2 * tokens * (block_size * kept) * dim
    return gate + qk + pv


def cross_attention_flops(tokens: int, text_len: int, dim: int) -> float:
    """Cross-attention to L text tokens: q and out projections of the video tokens, k and v
    projections of the text, Q K^T and P V against the text."""
    q_out = 2 * tokens * dim * dim + 2 * tokens * dim * dim
    kv = 2 * (2 * text_len * dim * dim)
    scores = 2 * tokens * text_len * dim + 2 * tokens * text_len * dim
    return q_out + kv + scores


def ffn_flops(tokens: int, dim: int, ffn: int) -> float:
    """Feed-forward network: up projection 2*S*d*f and down projection 2*S*f*d."""
    return 2 * tokens * dim * ffn + 2 * tokens * ffn * dim


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_density(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
        raise ValueError(f"density must be in (0, 1], got {value!r}")
    return float(value)


def _per_kind_densities(density: float | tuple[float, float, float]) -> tuple[float, ...]:
    if isinstance(density, (tuple, list)):
        if len(density) != len(LAYER_KINDS):
            raise ValueError(f"density must be one number or one per layer kind {LAYER_KINDS}, "
                             f"got {density!r}")
        return tuple(_check_density(d) for d in density)
    return (_check_density(density),) * len(LAYER_KINDS)


def _check_blocks(blocks: object, tokens: int) -> tuple[int, ...]:
    if not isinstance(blocks, (tuple, list)) or len(blocks) != len(LAYER_KINDS):
        raise ValueError(
            f"blocks must be (n1d, n2d, n3d), one block count per layer kind, got {blocks!r}")
    for kind, n in zip(LAYER_KINDS, blocks):
        _check_positive_int(f"blocks[{kind}]", n)
        if n > tokens:
            raise ValueError(f"blocks[{kind}] = {n} exceeds tokens = {tokens}")
    return tuple(blocks)


def forward_tflops(
    tokens: int,
    *,
    attention: str = "full",
    blocks: tuple[int, int, int] | None = None,
    density: float | tuple[float, float, float] | None = None,
    text_len: int = 300,
    layers: int = 30,
    dim: int = 1536,
    ffn: int = 8960,
) -> float:
    """TFLOPs (1e12) of one forward pass of Wan 2.1 1.3B on ``tokens`` video tokens.

    ``attention="full"``: dense self-attention in every layer (``blocks`` and ``density`` must be
    None). ``attention="vmoba"``: the layers split evenly over the 1D/2D/3D kinds (``layers`` a
    multiple of 3); ``blocks`` = (n1d, n2d, n3d) block counts and ``density`` = the fraction of
    blocks kept, one number for all kinds or one per kind (e.g. a run's measured densities).
    """
    for name, value in (("tokens", tokens), ("text_len", text_len), ("layers", layers),
                        ("dim", dim), ("ffn", ffn)):
        _check_positive_int(name, value)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    shared = (projection_flops(tokens, dim) + cross_attention_flops(tokens, text_len, dim)
              + ffn_flops(tokens, dim, ffn))
    if attention == "full":
        if blocks is not None or density is not None:
            raise ValueError("blocks and density apply only to attention='vmoba'; "
                             f"got blocks={blocks!r}, density={density!r} with attention='full'")
        return layers * (shared + dense_attention_flops(tokens, dim)) / 1e12
    if blocks is None or density is None:
        raise ValueError("attention='vmoba' needs both blocks=(n1d, n2d, n3d) and density")
    if layers % len(LAYER_KINDS):
        raise ValueError(f"layers must be divisible by 3 for attention='vmoba', got {layers}")
    counts = _check_blocks(blocks, tokens)
    densities = _per_kind_densities(density)
    per_kind = layers // len(LAYER_KINDS)
    total = sum(per_kind * (shared + block_sparse_attention_flops(tokens, dim, n, d))
                for n, d in zip(counts, densities))
    return total / 1e12


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.flops",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, required=True, help="video tokens S")
    parser.add_argument("--attention", choices=ATTENTIONS, default="full")
    parser.add_argument("--blocks", type=int, nargs=3, metavar=("N1D", "N2D", "N3D"),
                        help="block counts per layer kind (vmoba only)")
    parser.add_argument("--density", type=float, nargs="+",
                        help="kept fraction of blocks: one value, or three (1D 2D 3D) (vmoba only)")
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--ffn", type=int, default=8960)
    args = parser.parse_args(argv)
    density = args.density
    if density is not None:
        density = density[0] if len(density) == 1 else tuple(density)
    try:
        tflops = forward_tflops(args.tokens, attention=args.attention,
                                blocks=None if args.blocks is None else tuple(args.blocks),
                                density=density, text_len=args.text_len, layers=args.layers,
                                dim=args.dim, ffn=args.ffn)
    except ValueError as error:
        parser.error(str(error))
    print(f"{tflops:.2f} TFLOPs")


if __name__ == "__main__":
    main()
