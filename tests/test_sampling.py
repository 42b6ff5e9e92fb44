"""Flow-matching samplers: Euler and UniPC on an exactly known velocity field and on a tiny DiT."""

import contextlib
import json

import pytest
import torch

from vmoba.model import VideoDiT, VMoBASettings, load_transformer
from data.video_io import record_samples
from vmoba.sampling import make_scheduler, sample_videos

MU, STD = 0.2, 0.3  # the data distribution N(MU, STD^2) of every element
SHAPE = (1, 2, 4, 4)


class GaussianVelocity(torch.nn.Module):
    """The exact flow-matching velocity ``E[noise - x_0 | x_t]`` for data ``x_0 ~ N(MU, STD^2)``
    and ``x_t = (1 - t) x_0 + t noise``: ``x_t ~ N((1 - t) MU, s_t^2)`` with
    ``s_t^2 = (1 - t)^2 STD^2 + t^2``, and the probability-flow ODE carries noise ``z`` at t = 1
    to ``MU + STD z`` at t = 0 along ``x_t = (1 - t) MU + s_t z`` (curved in t unless STD = 1)."""

    @contextlib.contextmanager
    def dense_attention(self, enabled: bool = True):
        yield

    def forward(self, x, timestep, text):
        t = (timestep.double() / 1000).view(-1, 1, 1, 1, 1)
        var = (1 - t) ** 2 * STD**2 + t**2
        return (-MU + (t - (1 - t) * STD**2) / var * (x.double() - (1 - t) * MU)).float()


def _endpoint_error(scheduler: str, steps: int) -> float:
    text = torch.zeros(2, 3, 8)
    noise = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    exact = (MU + STD * noise).clamp(-1, 1)
    sample = sample_videos(
        GaussianVelocity(), text, text[:1], SHAPE, steps=steps, flow_shift=3.0,
        scheduler=scheduler, generator=torch.Generator().manual_seed(0),
    )
    return (sample - exact).abs().max().item()


def test_samplers_reach_the_exact_endpoint_of_a_gaussian_flow():
    euler = {steps: _endpoint_error("euler", steps) for steps in (40, 60, 80)}
    assert 1.8 < euler[40] / euler[80] < 2.2  # Euler: first order
    for steps in (60, 80):  # UniPC (order 2 + corrector): an order of magnitude closer
        assert _endpoint_error("unipc", steps) < min(0.005, euler[steps] / 7)


def test_unipc_and_euler_sample_the_tiny_dit_differently():
    torch.manual_seed(0)
    dit = VideoDiT(load_transformer(), VMoBASettings(mode="full"))
    text = torch.randn(1, 8, 64)

    def sample(scheduler: str, steps: int) -> torch.Tensor:
        return sample_videos(dit, text, torch.zeros(1, 8, 64), (3, 2, 8, 8), steps=steps,
                             scheduler=scheduler, generator=torch.Generator().manual_seed(0))

    euler, unipc = sample("euler", 4), sample("unipc", 4)
    assert unipc.shape == euler.shape == (1, 3, 2, 8, 8) and unipc.abs().max() <= 1
    assert not torch.allclose(unipc, euler, atol=1e-3)
    assert torch.equal(sample("unipc", 4), unipc)  # seeded


def test_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match=r"scheduler must be one of \('euler', 'unipc'\)"):
        make_scheduler("ddim", 3.0)


def test_record_samples_lists_every_video_of_a_folder_filled_batch_by_batch(tmp_path):
    settings = {"checkpoint": "last.ckpt", "seed": 0, "shape": (3, 5, 32, 32)}
    record_samples(tmp_path, settings, [{"file": "a.mp4", "prompt": "x"}])
    record_samples(tmp_path, settings, [{"file": "b.mp4", "prompt": "y"}])
    record_samples(tmp_path, settings, [{"file": "a.mp4", "prompt": "z"}])  # a rewritten video
    written = json.loads((tmp_path / "settings.json").read_text())
    assert written == {"checkpoint": "last.ckpt", "seed": 0, "shape": [3, 5, 32, 32],
                       "videos": [{"file": "a.mp4", "prompt": "z"}, {"file": "b.mp4", "prompt": "y"}]}
    record_samples(tmp_path, {**settings, "seed": 1}, [{"file": "c.mp4", "prompt": "w"}])
    written = json.loads((tmp_path / "settings.json").read_text())
    assert written["seed"] == 1 and written["videos"] == [{"file": "c.mp4", "prompt": "w"}]
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temporary left
