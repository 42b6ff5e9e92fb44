"""VMoBA in a plain diffusers ``WanPipeline`` (``vmoba.model.pipeline``), on a tiny random one."""

import torch
from helpers import save_tiny_wan

from vmoba.model import VMoBASettings
from vmoba.model.pipeline import enable_vmoba


def test_vmoba_in_a_diffusers_wan_pipeline(tmp_path):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(save_tiny_wan(tmp_path / "wan"))
    settings = VMoBASettings(  # 9 frames of 64 x 64 pixels: a 3 x 4 x 4 token grid
        block_1d=1, block_2d=[2, 2], block_3d=[1, 2, 2], select="topk", scope="query_head",
        topk=[2, 2, 2],
    )
    on_step_end = enable_vmoba(pipe, settings, steps=4)
    processors = [block.attn1.processor for block in pipe.transformer.blocks]
    calls = []  # (dense?, grid) of each transformer call: two a step (guidance)
    pipe.transformer.register_forward_pre_hook(
        lambda module, args: calls.append((processors[0].dense, processors[0].grid))
    )
    kwargs = dict(num_frames=9, height=64, width=64, num_inference_steps=4, guidance_scale=5.0,
                  output_type="latent", callback_on_step_end=on_step_end,
                  generator=torch.Generator().manual_seed(0))
    latents = pipe("a red circle moving left", **kwargs).frames
    assert latents.shape == (1, 4, 3, 8, 8) and torch.isfinite(latents).all()
    assert [dense for dense, _ in calls] == [True] * 2 + [False] * 6  # the first 25% dense
    assert calls[-1][1] == (3, 4, 4)
    assert all(0 < p.density.item() < 1 for p in processors)  # VMoBA ran in the last steps
    calls.clear()
    pipe("a red circle moving left", **kwargs)  # a second call starts dense again
    assert [dense for dense, _ in calls] == [True] * 2 + [False] * 6
