"""Sample videos from a trained checkpoint for the prompts of a file.

    python -m vmoba.sample --checkpoint runs/default/checkpoints/last.ckpt --prompts prompts.txt \\
        --out samples/ [--steps 30 --scheduler unipc --guidance 5 --flow-shift 3 \\
        --dense-fraction 0.25 --seed 0]

Prompts: one per line. On a GPU the DiT runs under bf16 autocast (as Lightning's bf16-mixed, and
what VMoBA's fast GPU backends take); ``--precision fp32`` turns it off. Writes one mp4 per
prompt (``000_<prompt>.mp4``) and ``settings.json``: the sampling settings, the checkpoint, the
video shape and each layer's kept density at the last denoising step (dense attention for the
first ``dense_fraction`` of the steps, VMoBA after).
A model trained on VAE latents samples latents and decodes them with its VAE.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from data.video_io import record_samples, write_mp4
from vmoba.flow_matching import VMoBAFlowMatching, step_generator
from vmoba.sampling import (
    SCHEDULERS,
    caption_slug,
    make_scheduler,
    sample_videos,
    to_uint8_frames,
)


def load_for_sampling(
    checkpoint: Path, device: str = "cpu"
) -> tuple[VMoBAFlowMatching, tuple[int, int, int, int]]:
    """The model of a checkpoint (eval mode) and the ``(3, T, H, W)`` of its training videos."""
    model = VMoBAFlowMatching.load_from_checkpoint(checkpoint, map_location=device).eval()
    # mmap: only the hyperparameters are read, not the weights a second time
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    data = ckpt["datamodule_hyper_parameters"]
    return model, (3, data["num_frames"], *data["resolution"])


def read_prompts(path: Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                        help="default: the checkpoint's model.sample_scheduler")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--flow-shift", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--dense-fraction", type=float, default=0.25)
    parser.add_argument("--frames", type=int, default=None, help="default: the training clips'")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="default: bf16 autocast on CUDA, fp32 elsewhere")
    args = parser.parse_args(argv)
    device_type = torch.device(args.device).type
    precision = args.precision or ("bf16" if device_type == "cuda" else "fp32")

    model, (_, frames, height, width) = load_for_sampling(args.checkpoint, args.device)
    video_shape = (3, args.frames or frames, *(args.size or (height, width)))
    shape = model.latent_shape(video_shape)
    flow_shift = model.hparams.flow_shift if args.flow_shift is None else args.flow_shift
    scheduler = args.scheduler or model.hparams.sample_scheduler
    args.out.mkdir(parents=True, exist_ok=True)
    settings = dict(
        checkpoint=str(args.checkpoint), shape=list(video_shape), latent_shape=list(shape),
        steps=args.steps, scheduler=type(make_scheduler(scheduler, flow_shift)).__name__,
        guidance_scale=args.guidance, flow_shift=flow_shift, dense_fraction=args.dense_fraction,
        seed=args.seed, precision=precision, attention=model.settings.mode,
        layer_kinds=[p.kind for p in model.dit.processors],
    )
    empty_text = model.text_encoder([""])  # the unconditional branch, shared by every prompt
    prompts = read_prompts(args.prompts)
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            video = sample_videos(
                model.dit, model.text_encoder([prompt]), empty_text, shape,
                steps=args.steps, guidance_scale=args.guidance, flow_shift=flow_shift,
                dense_fraction=args.dense_fraction, scheduler=scheduler,
                generator=step_generator(model.device, args.seed, i),
            )
        video = model.to_pixels(video.float())[0]
        name = f"{i:03d}_{caption_slug(prompt)}.mp4"
        write_mp4(args.out / name, to_uint8_frames(video), fps=args.fps)
        densities = [round(p.density.item(), 4) for p in model.dit.processors if p.density is not None]
        video_entry = dict(file=name, prompt=prompt, layer_density=densities)
        record_samples(args.out, settings, [video_entry])
        print(f"[{i + 1}/{len(prompts)}] {name}: {time.perf_counter() - start:.1f} s", flush=True)
    print(f"wrote {len(prompts)} videos and settings.json to {args.out}")


if __name__ == "__main__":
    main()
