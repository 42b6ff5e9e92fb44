"""The paper's pre-training experiment (App. C, Table 6, Fig. 7): the procedural scenes,
their datamodule option, the fixed-timestep validation loss, the training curve and its FLOPs,
bf16 validation samples, the configs of configs/pretrain and the sweep command end to end."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from data.datamodule import VideoDataModule, collate_videos
from data.scenes import PALETTE, Camera, ProceduralScenes, Scene, SceneObject, render_scene
from eval import reproduce_pretraining as rp
from eval.callbacks import step_tflops
from eval.flops import forward_tflops
from vmoba.attention import block_partition
from vmoba.cli import VMoBACLI
from vmoba.config_check import check_blocks
from vmoba.flow_matching import VMoBAFlowMatching
from vmoba.model import VMoBASettings

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "tests" / "configs" / "tiny.yaml")
PRETRAIN = REPO / "configs" / "pretrain"


# --- data.scenes ------------------------------------------------------------------------------


def _object(colour, shape, start, radius, velocity=(0.0, 0.0), texture="plain"):
    return SceneObject(
        shape=shape, colour=colour, texture=texture, direction="right", speed="slowly",
        radius=radius, start=start, velocity=velocity, period=0.1, angle=0.0,
    )


FLAT = np.zeros((1, 4))  # no background pattern: the mean of the two background colours
WAVY = np.array([[2.0, 1.0, 0.3, 1.0], [-1.0, 3.0, 1.2, 0.7]])  # a pattern that shows a pan
STILL = Camera(None, 0.0, 1.0)


def test_a_clip_is_a_function_of_seed_split_and_index():
    clips = ProceduralScenes(8, 5, (24, 40), "train", seed=3)
    first = clips[2]
    again = ProceduralScenes(8, 5, (24, 40), "train", seed=3)[2]  # a fresh dataset
    assert torch.equal(first["video"], again["video"]) and first["caption"] == again["caption"]
    assert first["index"] == 2
    val = ProceduralScenes(8, 5, (24, 40), "val", seed=3)[2]
    other_seed = ProceduralScenes(8, 5, (24, 40), "train", seed=4)[2]
    assert not torch.equal(first["video"], val["video"])
    assert not torch.equal(first["video"], other_seed["video"])
    assert not torch.equal(first["video"], clips[3]["video"])

    video = first["video"]
    assert video.dtype == torch.float32 and video.shape == (3, 5, 24, 40)
    pixels = (video + 1) * 127.5  # decoded as uint8 / 127.5 - 1
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    assert pixels.min() >= -1e-4 and pixels.max() <= 255 + 1e-4
    assert len(clips) == 8
    with pytest.raises(IndexError):
        clips[8]


def test_the_same_scene_at_two_resolutions():
    """Laid out in frame heights: 72x128 frames, 2x2-averaged, are the 36x64 frames up to the
    pixels on edges and fine textures (measured mean |diff| <= 0.04 over 40 clips, against >= 0.35
    between different clips)."""
    small = ProceduralScenes(8, 6, (36, 64), "val")
    large = ProceduralScenes(8, 6, (72, 128), "val")
    for index in range(4):
        a, b = small[index], large[index]
        assert a["caption"] == b["caption"]
        assert (F.avg_pool2d(b["video"], 2) - a["video"]).abs().mean() < 0.06


def test_a_later_object_hides_an_earlier_one():
    red = _object("red", "square", (0.5, 0.5), 0.3)
    blue = _object("blue", "circle", (0.5, 0.5), 0.15)
    for objects, centre in (((red, blue), "blue"), ((blue, red), "red")):
        scene = Scene(("black", "white"), FLAT, objects, STILL)
        frames = render_scene(scene, 2, 16, 16)
        assert frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8
        assert tuple(frames[0, 8, 8]) == PALETTE[centre]  # both cover the centre
        assert tuple(frames[0, 8, 5]) == PALETTE["red"]  # only the square reaches here
        background = np.rint((np.array(PALETTE["black"]) + PALETTE["white"]) / 2)
        assert tuple(frames[0, 0, 0]) == tuple(background)  # neither reaches the corner


def test_camera_pan_moves_the_background_and_a_still_camera_does_not():
    away = _object("red", "circle", (100.0, 100.0), 0.1)  # never in view
    still = render_scene(Scene(("blue", "yellow"), WAVY, (away,), STILL), 4, 16, 32)
    assert np.ptp(still[0].astype(int)) > 50  # a visible pattern...
    assert all(np.array_equal(still[0], frame) for frame in still)  # ...that stays put
    # one pixel (1/16 of a frame height) to the right per frame: the view slides left by one
    pan = Camera("right", 1 / 16, 1.0)
    frames = render_scene(Scene(("blue", "yellow"), WAVY, (away,), pan), 4, 16, 32)
    assert not np.array_equal(frames[0], frames[1])
    for t in range(3):
        shifted = frames[t + 1, :, :-1].astype(int) - frames[t, :, 1:].astype(int)
        assert np.abs(shifted).max() <= 1  # equal up to rounding
    zoom = Camera(None, 0.0, 1.35)
    zoomed = render_scene(Scene(("blue", "yellow"), WAVY, (away,), zoom), 4, 16, 32)
    assert np.array_equal(zoomed[0], still[0]) and not np.array_equal(zoomed[3], still[3])


def test_an_object_moves_with_its_velocity():
    square = _object("green", "square", (0.3, 0.5), 0.15, velocity=(2 / 16, 0.0))  # 2 px/frame
    frames = render_scene(Scene(("black", "white"), FLAT, (square,), STILL), 3, 16, 32)
    green = (frames == PALETTE["green"]).all(-1)
    columns = [np.flatnonzero(green[t].any(0)) for t in range(3)]
    assert len(columns[0]) > 0
    assert np.array_equal(columns[1], columns[0] + 2) and np.array_equal(columns[2], columns[0] + 4)


def test_captions_describe_every_object_and_the_camera():
    clips = ProceduralScenes(32, 2, (16, 16), "train")
    pans = zooms = still = 0
    for index in range(len(clips)):
        scene = clips.scene(index)
        caption = clips[index]["caption"]
        assert caption == scene.caption and 2 <= len(scene.objects) <= 4
        for obj in scene.objects:
            assert f"{obj.colour} {obj.shape} moving {obj.direction} {obj.speed}" in caption
            if obj.texture != "plain":
                assert f"{obj.texture} {obj.colour} {obj.shape}" in caption
        for colour in scene.background:
            assert colour in caption.split("over a ")[1]
        camera = scene.camera
        if camera.pan is not None:
            assert f"the camera pans {camera.pan}" in caption
            pans += 1
        if camera.zoom != 1.0:
            assert ("zooms in" if camera.zoom > 1 else "zooms out") in caption
            zooms += 1
        if camera.pan is None and camera.zoom == 1.0:
            assert caption.endswith("the camera is still")
            still += 1
    assert pans and zooms and still  # all three kinds among 32 clips
    hand = Scene(("black", "white"), FLAT, (_object("red", "square", (0.5, 0.5), 0.2),),
                 Camera("up and left", 0.01, 0.85))
    assert hand.caption == ("a red square moving right slowly, over a black and white background; "
                            "the camera pans up and left and zooms out")


@pytest.mark.parametrize("kwargs", [
    dict(num_clips=0), dict(num_frames=1), dict(resolution=(4, 64)), dict(resolution=(64,)),
    dict(split="test"), dict(seed=-1),
])
def test_bad_scene_arguments_raise(kwargs):
    args = dict(num_clips=4, num_frames=4, resolution=(16, 16), split="train", seed=0)
    with pytest.raises(ValueError):
        ProceduralScenes(**{**args, **kwargs})


# PRODUCT BUG (found while writing these tests; left failing on purpose): render_scene crashes
# on a Scene with no objects. `shades` is then np.array([]) of shape (0,), and
# `shades[top[painted] - 1, dark[painted]]` indexes it with two index arrays: IndexError "too
# many indices for array". sample_scene always draws 2-4 objects, so ProceduralScenes never hits
# it, but Scene/render_scene are public and an empty scene (a background and a camera) is valid.
def test_a_scene_without_objects_renders_its_background():
    scene = Scene(("blue", "yellow"), WAVY, (), Camera("right", 1 / 16, 1.0))
    frames = render_scene(scene, 3, 16, 32)
    assert frames.shape == (3, 16, 32, 3)
    assert np.abs(frames[1, :, :-1].astype(int) - frames[0, :, 1:].astype(int)).max() <= 1


# --- VideoDataModule(synthetic="scenes") -------------------------------------------------------


def test_datamodule_renders_scenes(tmp_path):
    unused = tmp_path / "unused"
    dm = VideoDataModule(synthetic="scenes", synthetic_root=str(unused), synthetic_num_clips=16,
                         num_frames=4, resolution=(32, 48), batch_size=2)
    dm.prepare_data()
    assert not unused.exists()  # nothing generated on disk
    dm.setup("fit")
    train, val = dm.train_dataset, dm.val_dataset
    assert isinstance(train, ProceduralScenes) and isinstance(val, ProceduralScenes)
    assert (train.split, len(train), val.split, len(val)) == ("train", 14, "val", 2)  # 7/8, 1/8
    for clips in (train, val):
        assert (clips.num_frames, clips.height, clips.width) == (4, 32, 48)
    for loader, clips in ((dm.train_dataloader(), train), (dm.val_dataloader(), val)):
        batch = next(iter(loader))
        video = batch["video"]
        assert video.shape == (2, 3, 4, 32, 48) and video.dtype == torch.float32
        assert -1 <= video.min() and video.max() <= 1
        assert len(batch["caption"]) == 2
        first = int(batch["index"][0])
        assert torch.equal(video[0], clips[first]["video"])
        assert batch["caption"][0] == clips[first]["caption"]

    big = VideoDataModule(synthetic="scenes", synthetic_num_clips=100_000, num_frames=20,
                          resolution=(36, 64))
    big.setup("fit")  # rendered lazily: instant
    assert (len(big.train_dataset), len(big.val_dataset)) == (87_500, 12_500)


@pytest.mark.parametrize("kwargs", [dict(frame_stride=2), dict(target_fps=8.0)])
def test_scenes_refuse_frame_stride_and_fps(kwargs):
    with pytest.raises(ValueError, match="synthetic='scenes'"):
        VideoDataModule(synthetic="scenes", num_frames=4, resolution=(32, 32), **kwargs)
    VideoDataModule(synthetic="shapes", num_frames=4, resolution=(32, 32), **kwargs)  # fine there


# --- model.val_timesteps ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def val_clips():
    clips = ProceduralScenes(8, 4, (32, 32), "val")
    return clips[0], clips[5]


def test_fixed_timestep_loss_of_a_clip_does_not_depend_on_its_batch(val_clips):
    model = VMoBAFlowMatching(val_timesteps=3).eval()
    a, b = val_clips
    with torch.no_grad():
        pair = model.evaluation_loss(collate_videos([a, b]), 0)
        alone_a = model.evaluation_loss(collate_videos([a]), 0)
        alone_b = model.evaluation_loss(collate_videos([b]), 1)  # another batch index, too
        swapped = model.evaluation_loss(collate_videos([b, a]), 7)
    expected = (alone_a + alone_b) / 2
    assert pair.item() == pytest.approx(expected.item(), rel=1e-5)
    assert swapped.item() == pytest.approx(expected.item(), rel=1e-5)
    assert alone_a.item() != pytest.approx(alone_b.item(), rel=1e-3)  # two different clips


def test_fixed_timesteps_are_the_shifted_midpoints(val_clips, monkeypatch):
    model = VMoBAFlowMatching(val_timesteps=3).eval()  # flow_shift 3
    seen = []
    original = model.velocity_loss

    def spy(x0, t, noise, text):
        seen.append((t.clone(), noise.clone()))
        return original(x0, t, noise, text)

    monkeypatch.setattr(model, "velocity_loss", spy)
    with torch.no_grad():
        model.evaluation_loss(collate_videos(list(val_clips)), 0)
        model.evaluation_loss(collate_videos(list(val_clips)), 1)
    assert len(seen) == 6
    # t = 3u / (1 + 2u) at u = 1/6, 1/2, 5/6
    for (t, _), expected in zip(seen, [0.375, 0.75, 0.9375] * 2):
        assert torch.allclose(t, torch.full((2,), expected)), t
    noises = [noise for _, noise in seen]
    assert all(torch.equal(n, m) for n, m in zip(noises[:3], noises[3:]))  # fixed per clip, k
    assert not torch.equal(noises[0][0], noises[0][1]) and not torch.equal(noises[0], noises[1])


@pytest.mark.parametrize("steps", [0, -2])
def test_val_timesteps_must_be_positive(steps):
    with pytest.raises(ValueError, match="val_timesteps"):
        VMoBAFlowMatching(val_timesteps=steps)


# --- eval.callbacks.step_tflops -----------------------------------------------------------------

SMALL_DIT = dict(  # 3 layers, 2 heads of 16 (width 32), FFN 64
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=3,
    out_channels=3, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=3, rope_max_seq_len=256,
)
BLOCKS_1024 = dict(block_1d=2, block_2d=[8, 8], block_3d=[2, 8, 8])  # on grid (4, 16, 16)


def test_step_tflops_of_full_attention():
    model = VMoBAFlowMatching(transformer=SMALL_DIT, attention=VMoBASettings(mode="full"),
                              text_max_length=16)
    expected = 3 * 5 * forward_tflops(1024, attention="full", text_len=16, layers=3, dim=32,
                                      ffn=64)
    assert step_tflops(model, (4, 16, 16), 5, None) == pytest.approx(expected, rel=1e-12)


def test_step_tflops_of_vmoba_uses_the_block_counts_of_the_grid():
    model = VMoBAFlowMatching(transformer=SMALL_DIT, attention=VMoBASettings(**BLOCKS_1024),
                              text_max_length=16)
    grid = (4, 16, 16)
    # 1D: 4 frames / 2; 2D: (16/8) * (16/8); 3D: (4/2) * (16/8) * (16/8)
    assert [block_partition(grid, model.settings.block(k)).num_blocks
            for k in ("1d", "2d", "3d")] == [2, 4, 8]
    density = (0.5, 0.25, 0.2)
    expected = 3 * 2 * forward_tflops(1024, attention="vmoba", blocks=(2, 4, 8), density=density,
                                      text_len=16, layers=3, dim=32, ffn=64)
    assert step_tflops(model, grid, 2, density) == pytest.approx(expected, rel=1e-12)
    full = step_tflops(model, grid, 2, None)
    assert step_tflops(model, grid, 2, (1.0, 1.0, 1.0)) > step_tflops(model, grid, 2, density)
    assert step_tflops(model, grid, 2, density) < full


# --- ValidationSamples under bf16-mixed ---------------------------------------------------------


def test_validation_samples_run_under_the_runs_autocast(tmp_path, monkeypatch):
    seen = []
    generate = VMoBAFlowMatching.generate

    def spy(self, captions, shape):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return generate(self, captions, shape)

    monkeypatch.setattr(VMoBAFlowMatching, "generate", spy)
    run_dir = tmp_path / "run"
    cli = VMoBACLI(args=[
        f"--config={TINY}", f"--trainer.default_root_dir={run_dir}", "--data.synthetic=scenes",
        "--trainer.precision=bf16-mixed", "--trainer.max_steps=1", "--trainer.val_check_interval=1",
        "--trainer.num_sanity_val_steps=0", "--model.num_samples=1", "--model.sample_steps=2",
    ], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert seen == [(True, torch.bfloat16)]
    assert len(list((run_dir / "samples").glob("step000001_0_*.mp4"))) == 1


# --- configs/pretrain ---------------------------------------------------------------------------


class ParseOnly(VMoBACLI):
    """Parses and type-checks a config and checks its blocks against its token grid, building
    nothing (as in tests/test_training.py)."""

    def before_instantiate_classes(self) -> None:
        check_blocks(self.config.model, self.config.data)

    def instantiate_classes(self) -> None:
        pass


# tokens file -> (frames, height, width), patch grid, blocks per 1D/2D/3D layer
TOKENS = {
    1024: ((4, 32, 32), (4, 16, 16), (2, 4, 8)),
    11520: ((20, 36, 64), (20, 18, 32), (10, 48, 60)),
    46080: ((20, 72, 128), (20, 36, 64), (10, 48, 60)),
}
# Table 6: size -> (layers, heads, hidden, FFN); dit_tiny.yaml is a CPU check, not in the table
TABLE6 = {"5.6m": (3, 3, 384, 896), "60.4m": (9, 5, 640, 2688), "217m": (15, 7, 896, 4480),
          "526m": (21, 9, 1152, 6272), "tiny": (3, 2, 32, 64)}


def test_the_pretrain_configs_are_the_ones_tested():
    assert {p.stem for p in PRETRAIN.glob("dit_*.yaml")} == {f"dit_{s}" for s in TABLE6}
    assert {p.stem for p in PRETRAIN.glob("tokens_*.yaml")} == {f"tokens_{n}" for n in TOKENS}
    assert set(rp.TOKENS) == set(TOKENS)
    sizes = {(PRETRAIN / name).stem.removeprefix("dit_") for name in rp.SIZES.values()}
    assert sizes == set(TABLE6)


@pytest.mark.parametrize("tokens", sorted(TOKENS))
@pytest.mark.parametrize("size", sorted(TABLE6))
def test_every_pretrain_config_layering_parses(size, tokens):
    files = ["base.yaml", f"dit_{size}.yaml", f"tokens_{tokens}.yaml"]
    (frames, height, width), grid, blocks = TOKENS[tokens]
    layers, heads, hidden, ffn = TABLE6[size]
    for mode, extra in (("vmoba", []), ("full", ["full.yaml"])):
        args = [f"--config={PRETRAIN / name}" for name in files + extra]
        cfg = ParseOnly(args=args, run=False).config
        assert cfg.data.synthetic == "scenes" and cfg.data.frame_stride == 1
        assert (cfg.data.num_frames, *cfg.data.resolution) == (frames, height, width)
        transformer = cfg.model.transformer
        assert tuple(transformer["patch_size"]) == (1, 2, 2)
        assert (frames, height // 2, width // 2) == grid
        assert (transformer["num_layers"], transformer["num_attention_heads"]) == (layers, heads)
        assert transformer["num_attention_heads"] * transformer["attention_head_dim"] == hidden
        assert transformer["ffn_dim"] == ffn and transformer["in_channels"] == 3
        assert cfg.model.val_timesteps == 4 and cfg.trainer.num_sanity_val_steps == -1
        assert any(c.class_path == "eval.callbacks.TrainingCurve" for c in cfg.trainer.callbacks)
        attention = VMoBASettings(**cfg.model.attention.as_dict())
        assert attention.mode == mode
        assert (attention.select, attention.scope, attention.threshold) == (
            "threshold", "head_global", 0.25)
        counts = tuple(block_partition(grid, attention.block(k)).num_blocks
                       for k in ("1d", "2d", "3d"))
        assert counts == blocks


@pytest.mark.parametrize("mode", rp.MODES)
def test_the_sweeps_tiny_command_lines_parse(mode, tmp_path):
    args = rp.Run("tiny", 1024, mode).fit_args(4, 2, tmp_path / "run", tiny=True)
    assert args[0] == "fit"
    cfg = ParseOnly(args=args[1:], run=False).config
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (4, 2)
    assert cfg.trainer.default_root_dir == str(tmp_path / "run")
    assert (cfg.model.val_timesteps, cfg.model.num_samples, cfg.data.batch_size) == (2, 1, 2)
    assert cfg.model.attention.mode == mode


def _block_parameters(size: str) -> int:
    from diffusers import WanTransformer3DModel

    config = yaml.safe_load((PRETRAIN / f"dit_{size}.yaml").read_text())["model"]["transformer"]
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    return sum(p.numel() for p in model.blocks.parameters())


@pytest.mark.parametrize("size, table", [("5.6m", 5.6e6), ("60.4m", 60.4e6), ("217m", 217e6),
                                         ("526m", 526e6)])
def test_dit_sizes_match_table_6(size, table):
    """The blocks' parameters (what the sweep reports) are within 1% of Table 6 (5.63M, 60.60M,
    217.11M, 527.06M: 526M's rounds to 527M); their weight matrices alone, 8 d^2 + 2 d f per
    layer (5.60M, 60.46M, 216.76M, 526.42M), are within 0.2%: the paper's count, it seems."""
    layers, _, d, f = TABLE6[size]
    params = _block_parameters(size)
    assert abs(params / table - 1) < 0.01
    matrices = layers * (8 * d * d + 2 * d * f)
    assert abs(matrices / table - 1) < 0.002
    assert params > matrices  # plus biases, norms and modulation tables


# --- eval.reproduce_pretraining -----------------------------------------------------------------


def test_claims_on_hand_made_rows():
    def rows(*gaps, tokens=11520):
        return [dict(tokens=tokens, size=s, gap=g) for s, g in zip(["5.6M", "60.4M", "217M"], gaps)]

    shrinking = rp.claims(rows(0.02, 0.01))
    assert len(shrinking) == 2 and shrinking[0].startswith("- 11,520 tokens:")
    assert "5.6M +0.0200, 60.4M +0.0100" in shrinking[0]
    assert shrinking[0].endswith("Gap above zero at every size: yes.")
    assert shrinking[1].strip() == "Gap shrinking as the model grows: yes."
    growing = rp.claims(rows(0.01, 0.02))
    assert growing[0].endswith("above zero at every size: yes.")
    assert growing[1].endswith("shrinking as the model grows: no.")
    assert rp.claims(rows(0.02, 0.01, 0.01))[1].endswith("grows: no.")  # not strictly
    negative = rp.claims(rows(0.02, -0.01))
    assert negative[0].endswith("above zero at every size: no.")
    assert negative[1].endswith("grows: yes.")
    one = rp.claims(rows(0.03, tokens=46080) + rows(0.02, -0.01))
    assert len(one) == 3  # one size at 46K: no trend line
    assert one[0].startswith("- 11,520") and one[2].startswith("- 46,080")
    assert one[0].endswith("zero at every size: no.")
    assert one[2].endswith("zero at every size: yes.")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One tiny sweep (two CPU fits, ~45 s): its folder and report."""
    out = tmp_path_factory.mktemp("pretraining")
    rp.main(["--tiny", "--out-dir", str(out)])
    return out, json.loads((out / "pretraining.json").read_text())


def test_tiny_sweep_writes_the_report(sweep):
    out, report = sweep
    assert (out / "pretraining.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["tiny"] is True and (report["steps"], report["val_every"]) == (4, 2)
    runs = {r["attention"]: r for r in report["runs"]}
    assert len(report["runs"]) == 2 and set(runs) == {"full", "vmoba"}
    assert all((r["size"], r["tokens"]) == ("tiny", 1024) for r in runs.values())
    # dit_tiny.yaml: 3 layers of width 32, FFN 64; text of 32 tokens; 2 clips of 4x16x16 a step
    shape = dict(text_len=32, layers=3, dim=32, ffn=64)
    for mode, run in runs.items():
        curve = run["curve"]
        assert [c["step"] for c in curve] == [0, 2, 4]
        assert [c["tokens_seen"] for c in curve] == [step * 2 * 1024 for step in (0, 2, 4)]
        for key in ("train_tflops", "wall_s"):
            values = [c[key] for c in curve]
            assert all(a < b for a, b in zip(values, values[1:])), (mode, key, values)
        assert curve[0]["train_tflops"] == 0 and curve[0]["density"] is None
        for row in curve[1:]:
            if mode == "full":
                assert row["density"] is None
                step = forward_tflops(1024, attention="full", **shape)
            else:  # FLOPs are linear in density: its mean over the steps gives the sum
                density = tuple(row["density"][k] for k in ("1d", "2d", "3d"))
                assert all(0 < d < 1 for d in density)
                step = forward_tflops(1024, attention="vmoba", blocks=(2, 4, 8), density=density,
                                      **shape)
            assert row["train_tflops"] == pytest.approx(row["step"] * 3 * 2 * step, rel=1e-9)
        assert run["final_val_loss"] == curve[-1]["val_loss"]
        assert run["train_tflops"] == curve[-1]["train_tflops"]
        assert all(math.isfinite(c["val_loss"]) for c in curve)
        assert run["validation"] == dict(clips=2, timesteps=2)
        metrics = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())
        assert metrics["global_step"] == 4 and metrics["attention"] == mode
        assert metrics["val_loss_end"] == pytest.approx(curve[-1]["val_loss"], rel=1e-6)
        assert run["block_parameters"] == 39_072  # dit_tiny.yaml's blocks
        assert 0 <= run["samples"]["temporal_flickering"]["mean"] <= 1
    assert runs["vmoba"]["curve"][-1]["train_tflops"] < runs["full"]["curve"][-1]["train_tflops"]
    assert "psnr" in runs["vmoba"]["samples"] and "psnr" not in runs["full"]["samples"]

    [row] = report["comparisons"]
    full, vmoba = runs["full"]["final_val_loss"], runs["vmoba"]["final_val_loss"]
    assert (row["full_val_loss"], row["vmoba_val_loss"]) == (full, vmoba)
    assert row["gap"] == pytest.approx(vmoba - full, abs=1e-12)
    assert row["flops_ratio"] == pytest.approx(
        runs["vmoba"]["train_tflops"] / runs["full"]["train_tflops"])
    assert report["claims"] == rp.claims(report["comparisons"])
    above = "yes" if row["gap"] > 0 else "no"
    md = (out / "pretraining.md").read_text()
    assert "| tokens | size (block params) | full val loss | VMoBA val loss |" in md
    assert f"| 1,024 | tiny (0.04M) | {full:.4f} | {vmoba:.4f} | {row['gap']:+.4f}" in md
    assert f"Gap above zero at every size: {above}." in md
    assert "--tiny" in md and "2 held-out procedural clips, each at 2 fixed timesteps" in md


def test_a_second_sweep_reuses_finished_runs(sweep, capfd):
    out, first = sweep
    runs = out / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/metrics.json")}
    assert len(stamps) == 2
    capfd.readouterr()
    rp.main(["--tiny", "--out-dir", str(out)])
    output = capfd.readouterr()
    text = output.out + output.err
    for name in ("tiny_1024_full", "tiny_1024_vmoba"):
        assert f"== {name}: reusing {runs / name}" in text
    assert ": python main.py fit" not in text and "fit writes to" not in text
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/metrics.json")} == stamps
    again = json.loads((out / "pretraining.json").read_text())
    assert again["runs"] == first["runs"] and again["comparisons"] == first["comparisons"]


def test_an_unfinished_run_stops_the_sweep_before_any_fit(sweep, tmp_path, capfd):
    """Every run folder is checked before the first fit: with the full run still to do and the
    VMoBA run unfinished, nothing is trained."""
    out, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(out / "runs" / "tiny_1024_vmoba", copy / "runs" / "tiny_1024_vmoba")
    (copy / "runs" / "tiny_1024_vmoba" / "metrics.json").unlink()
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        rp.main(["--tiny", "--out-dir", str(copy)])
    assert exit_info.value.code == 2
    output = capfd.readouterr()
    assert "tiny_1024_vmoba holds a run that did not finish 4 steps" in output.err
    assert "== tiny_1024_full: python main.py fit" not in output.out + output.err
    assert not (copy / "runs" / "tiny_1024_full").exists()
    assert not (copy / "pretraining.json").exists()
