"""The varlen backend's packing plan and merge, checked on the CPU (the kernels need CUDA)."""

import torch

from vmoba.attention import block_partition
from vmoba.attention.segment_merge import merge_by_lse, rows_by_destination, sum_by_destination
from vmoba.attention.varlen import _segments


def test_segments_pack_each_sample_head_block_with_its_queries():
    part = block_partition((5, 7, 6), (2, 3, 4))  # ragged, 18 blocks
    batch, heads, tokens, blocks = 2, 3, 210, part.num_blocks
    keep = torch.rand(batch, heads, tokens, blocks, generator=torch.Generator().manual_seed(0)) < 0.3
    rows, cu_q, cu_k, max_q, max_k = _segments(keep, part)
    seg = 0
    for b in range(batch):
        for h in range(heads):
            for j in range(blocks):
                queries = keep[b, h, :, j].nonzero().squeeze(1)
                packed = rows[cu_q[seg] : cu_q[seg + 1]]
                assert torch.equal(packed, (b * heads + h) * tokens + queries)
                start = (b * heads + h) * tokens + part.block_offsets[j]
                assert cu_k[seg] == start and cu_k[seg + 1] - cu_k[seg] == part.block_sizes[j]
                seg += 1
    assert max_q == int(keep.sum(2).max()) and max_k == int(part.block_sizes.max())


def test_merge_equals_softmax_over_the_union_of_segments():
    gen = torch.Generator().manual_seed(1)
    scores = [torch.randn(4, 5, generator=gen) * 3 for _ in range(3)]  # 4 queries, 3 key blocks
    values = [torch.randn(5, 8, generator=gen) for _ in range(3)]
    rows, outs, lses = [], [], []
    for s, v in zip(scores, values):  # each block's partial softmax, as the kernel returns it
        rows.append(torch.arange(4))
        outs.append(s.softmax(-1) @ v)
        lses.append(torch.logsumexp(s, -1))
    rows = torch.cat(rows)
    merged, lse = merge_by_lse(torch.cat(outs), torch.cat(lses), rows, *rows_by_destination(rows, 4))
    expected = torch.cat(scores, -1).softmax(-1) @ torch.cat(values)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, torch.logsumexp(torch.cat(scores, -1), -1))


def test_sum_by_destination_and_csr_order():
    rows = torch.tensor([2, 0, 2, 1, 0, 2])
    order, starts = rows_by_destination(rows, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5] and starts.tolist() == [0, 2, 3, 6, 6]
    x = torch.arange(12.0).view(6, 2)
    expected = torch.tensor([[2.0 + 8, 3 + 9], [6, 7], [0 + 4 + 10, 1 + 5 + 11], [0, 0]])
    assert torch.equal(sum_by_destination(x, rows, order, starts), expected)
