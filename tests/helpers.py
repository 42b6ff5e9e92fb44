"""Shared test helpers."""

import dataclasses
import json
import os
from pathlib import Path

import torch
import yaml

from vmoba.attention import VMoBAConfig, vmoba_attention

CONFIGS = Path(__file__).resolve().parent / "configs"


def strict_json(path: Path):
    """The JSON file at ``path``, failing on the non-standard literals Infinity and NaN."""

    def reject(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    return json.loads(Path(path).read_text(), parse_constant=reject)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()


def tensors_outside_saved(grad_fn) -> list[str]:
    """Attributes of a custom autograd Function's context that hold tensors (in dataclasses,
    tuples, lists or dicts too). Those bypass ``save_for_backward``, so activation checkpointing
    cannot drop them: each layer's would stay alive until its backward."""

    def holds_tensor(x) -> bool:
        if isinstance(x, torch.Tensor):
            return True
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return any(holds_tensor(getattr(x, f.name)) for f in dataclasses.fields(x))
        if isinstance(x, dict):
            x = list(x.values())
        return isinstance(x, (list, tuple)) and any(holds_tensor(i) for i in x)

    return [name for name, value in vars(grad_fn).items() if holds_tensor(value)]


def random_qkv(batch, tokens, heads, dim, *, dtype=torch.float32, seed=0, grad=True):
    """Fresh seeded random q, k, v ``[B, S, H, D]`` (leaf tensors)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, tokens, heads, dim, generator=gen, dtype=dtype).requires_grad_(grad)
        for _ in range(3)
    )


def save_tiny_wan(root: Path) -> Path:
    """Save a tiny random Wan 2.1 pipeline (transformer of ``tests/configs/tiny_vae.yaml``,
    ``AutoencoderKLWan`` with z = 4, UMT5 encoder + ByT5 tokenizer, UniPC scheduler) to ``root``,
    laid out as diffusers lays out a downloaded one. Returns ``root``."""
    # Imported here: the attention tests use this module too and need none of these.
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    from vmoba.sampling import make_scheduler

    config = yaml.safe_load((CONFIGS / "tiny_vae.yaml").read_text())["model"]["transformer"]
    tokenizer = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipeline = WanPipeline(
            tokenizer=tokenizer,
            text_encoder=UMT5EncoderModel(UMT5Config(
                vocab_size=len(tokenizer), d_model=config["text_dim"], d_ff=64, num_heads=2,
                d_kv=config["text_dim"] // 2, num_layers=2,
            )),
            transformer=WanTransformer3DModel(**config),
            vae=AutoencoderKLWan(
                base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0],
            ),
            scheduler=make_scheduler("unipc", 3.0),
        )
    pipeline.save_pretrained(root)
    return root


class AttentionLayer(torch.nn.Module):
    """A module whose forward is one ``vmoba_attention`` call on a fixed grid and config."""

    def __init__(self, grid, config: VMoBAConfig):
        super().__init__()
        self.grid, self.config = grid, config

    def forward(self, q, k, v):
        return vmoba_attention(q, k, v, grid=self.grid, config=self.config)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on (for a process group's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, backend: str, port: int, fn, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # the processes share the CI machine's cores
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def _start_forkserver(module: str) -> None:
    """Start multiprocessing's fork server with ``module`` imported, once per test session, so
    every gloo process starts in milliseconds instead of importing torch and diffusers again.

    The server is a fresh interpreter that (on Python 3.11) ignores our ``sys.path``, where
    pytest put ``tests/``: it gets it through ``PYTHONPATH`` while it starts.
    """
    import multiprocessing.forkserver
    import sys

    import torch.multiprocessing as mp

    mp.set_forkserver_preload([module])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def run_distributed(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 120.0):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes of one process group
    (``"nccl"``: rank ``r`` on GPU ``r``).

    ``fn`` must be importable (a module-level function); an exception in any process fails the
    caller with that process's traceback, and a hang is killed after ``timeout`` seconds.
    """
    import time

    import pytest
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_backend_available(backend):
        pytest.skip(f"torch.distributed with the {backend} backend is unavailable")
    # The fork server imports the test module, which may touch CUDA: NCCL ranks spawn instead.
    if backend != "nccl":
        _start_forkserver(fn.__module__)
    context = mp.start_processes(
        _worker,
        args=(world_size, backend, free_port(), fn, args),
        nprocs=world_size,
        join=False,
        start_method="spawn" if backend == "nccl" else "forkserver",
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world_size} {backend} processes still running after {timeout} s")


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""This process runs Triton kernels on the CPU, in Triton's interpreter."""


def run_interpreted(test_file: str, keyword: str, expected: int) -> None:
    """Run the tests of ``test_file`` matching ``keyword`` in a child pytest under
    ``TRITON_INTERPRET=1`` (Triton reads it at import) and require ``expected`` of them to pass,
    none skipped. Skipped where CUDA is present: there ``tests/test_gpu.py`` runs the same kernels
    compiled (and the search kernels' interpreted run failed under Triton 3.6 on the H200 machine,
    cause not yet investigated)."""
    import subprocess
    import sys

    import pytest

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the GPU tests run these kernels compiled")

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", keyword],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{expected} passed" in result.stdout, result.stdout[-2000:]
