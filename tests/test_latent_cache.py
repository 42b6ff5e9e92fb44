"""The latent cache on a tiny random Wan pipeline: preprocess (bad files skipped and counted,
resumable), cached batches identical to raw ones, and save_pretrained -> preprocess -> fit ->
predict -> sample end to end."""

import json
import shutil
from pathlib import Path

import decord
import pytest
import torch
from helpers import CONFIGS, save_tiny_wan
from safetensors.torch import load_file

from data.datamodule import VideoDataModule
from data.latent_cache import LatentCacheDataset, collate_cached, read_shard_header, shard_name
from data.synthetic import ensure_synthetic_dataset
from vmoba.cli import VMoBACLI
from vmoba.flow_matching import VMoBAFlowMatching, step_generator
from vmoba.model import VMoBASettings
from vmoba.preprocess import main as preprocess_main
from vmoba.preprocess import preprocess
from vmoba.sample import main as sample_main

FRAMES, SIZE, TEXT_LENGTH = 5, 32, 24  # latents 4 x 2 x 4 x 4 -> an 8-token grid
CLIPS = dict(num_frames=FRAMES, resolution=(SIZE, SIZE))
TINY_BLOCKS = VMoBASettings(block_1d=1, block_2d=(2, 2), block_3d=(1, 2, 2))


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("wan"))


def _write_manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    path.write_text("".join(json.dumps({"path": str(p), "caption": c}) + "\n" for p, c in rows))
    return path


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    """``clean`` (8 good rows), ``mixed`` (the 8 with a corrupt and a truncated file: 20% bad),
    ``val`` (2 good rows)."""
    root = tmp_path_factory.mktemp("clips")
    synthetic = ensure_synthetic_dataset(root, num_clips=10, num_frames=8, size=SIZE)
    rows = [
        (root / row["path"], row["caption"])
        for split in (synthetic.train, synthetic.val)
        for row in map(json.loads, split.read_text().splitlines())
    ]
    (root / "corrupt.mp4").write_bytes(b"\x00not a video" * 100)
    truncated = rows[0][0].read_bytes()
    (root / "truncated.mp4").write_bytes(truncated[: len(truncated) // 2])
    bad = [(root / "corrupt.mp4", "noise"), (root / "truncated.mp4", "cut short")]
    return {
        "clean": _write_manifest(root / "clean.jsonl", rows[:8]),
        "mixed": _write_manifest(
            root / "mixed.jsonl", rows[:3] + bad[:1] + rows[3:7] + bad[1:] + rows[7:8]
        ),
        "val": _write_manifest(root / "val.jsonl", rows[8:]),
    }


def _preprocess(manifest: Path, out: Path, wan_dir: Path, **overrides) -> dict:
    settings = dict(**CLIPS, text_max_length=TEXT_LENGTH, shard_size=4) | overrides
    return preprocess(manifest, out, wan_dir, wan_dir, **settings)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, wan_dir, manifests) -> dict[str, Path]:
    """Caches of the three manifests; ``mixed`` through the command line."""
    root = tmp_path_factory.mktemp("caches")
    preprocess_main([
        f"--manifest={manifests['mixed']}", f"--out={root / 'mixed'}", f"--vae_path={wan_dir}",
        f"--text_encoder_path={wan_dir}", f"--text_max_length={TEXT_LENGTH}",
        f"--num_frames={FRAMES}", "--resolution", str(SIZE), str(SIZE), "--shard_size=4",
    ])
    _preprocess(manifests["clean"], root / "clean", wan_dir)
    _preprocess(manifests["val"], root / "val", wan_dir)
    return {name: root / name for name in ("mixed", "clean", "val")}


def test_preprocess_skips_and_counts_bad_files(caches, manifests):
    index = json.loads((caches["mixed"] / "index.json").read_text())
    assert index["rows"] == 10 and index["clips"] == 8
    assert index["skipped"] == [
        {"row": 3, "path": str(manifests["mixed"].parent / "corrupt.mp4")},
        {"row": 8, "path": str(manifests["mixed"].parent / "truncated.mp4")},
    ]
    assert [s["rows"] for s in index["shards"]] == [[0, 1, 2], [4, 5, 6, 7], [9]]
    assert index["latent_shape"] == [4, 2, 4, 4] and index["text_dim"] == 64
    dataset = LatentCacheDataset(caches["mixed"])
    assert len(dataset) == 8 and [dataset[i]["index"] for i in range(8)] == [0, 1, 2, 4, 5, 6, 7, 9]
    sample = dataset[3]
    assert sample["posterior_mean"].shape == sample["posterior_std"].shape == (4, 2, 4, 4)
    assert sample["text"].shape == (TEXT_LENGTH, 64) and sample["posterior_std"].min() > 0


def test_preprocess_resumes_and_refuses_other_settings(tmp_path, caches, wan_dir, manifests):
    cache = Path(shutil.copytree(caches["mixed"], tmp_path / "cache"))
    shards = sorted(cache.glob("shard_*.safetensors"))
    stamps = [(p.stat().st_mtime_ns, p.stat().st_size) for p in shards]
    again = _preprocess(manifests["mixed"], cache, wan_dir)
    assert (again["encoded"], again["shards_reused"], again["shards_written"]) == (0, 3, 0)
    assert [(p.stat().st_mtime_ns, p.stat().st_size) for p in shards] == stamps
    assert (cache / "index.json").read_text() == (caches["mixed"] / "index.json").read_text()

    # An interrupted run: one shard missing and no index yet. The rerun redoes only that shard,
    # exactly (clip start frames and encodings are deterministic).
    (cache / shard_name(1)).unlink()
    (cache / "index.json").unlink()
    resumed = _preprocess(manifests["mixed"], cache, wan_dir)
    assert (resumed["encoded"], resumed["skipped"], resumed["shards_written"]) == (4, 2, 1)
    redone, first = (load_file(c / shard_name(1)) for c in (cache, caches["mixed"]))
    assert redone.keys() == first.keys() and all(torch.equal(redone[k], first[k]) for k in first)
    assert read_shard_header(cache / shard_name(1)) == read_shard_header(
        caches["mixed"] / shard_name(1)
    )
    assert (cache / "index.json").read_text() == (caches["mixed"] / "index.json").read_text()
    with pytest.raises(ValueError, match="made with other settings"):
        _preprocess(manifests["mixed"], cache, wan_dir, seed=1)


def test_cached_batches_feed_the_dit_what_raw_batches_do(wan_dir, manifests, caches):
    model = VMoBAFlowMatching(
        pretrained_path=str(wan_dir), vae_path=str(wan_dir), text_encoder_path=str(wan_dir),
        text_max_length=TEXT_LENGTH, attention=TINY_BLOCKS, caption_dropout=0.5,
    )
    calls = []  # (noisy latents, timesteps, text) of every DiT call
    forward = model.dit.forward
    model.dit.forward = lambda *args: (calls.append(args), forward(*args))[1]
    raw = VideoDataModule(str(manifests["clean"]), str(manifests["val"]), batch_size=2, **CLIPS)
    cached = VideoDataModule(
        train_cache=str(caches["clean"]), val_cache=str(caches["val"]), batch_size=2, **CLIPS
    )
    clips, losses = {}, {}
    for name, datamodule in (("raw", raw), ("cached", cached)):
        datamodule.setup("fit")
        batches = list(datamodule.train_dataloader()) + list(datamodule.val_dataloader())
        clips[name] = [(b["index"].tolist(), b["caption"]) for b in batches]
        losses[name] = [
            model.flow_matching_loss(batch, step_generator(model.device, 0, step), dropout=0.5)
            for step, batch in enumerate(batches)
        ]
    assert clips["raw"] == clips["cached"] and len(calls) == 10  # same clips in the same order
    for raw_call, cached_call in zip(calls[:5], calls[5:]):
        assert all(torch.equal(r, c) for r, c in zip(raw_call, cached_call, strict=True))
    assert losses["raw"] == losses["cached"]
    # The dropout path was taken: some caption was replaced by the empty one.
    empty = model.text_encoder([""])[0]
    assert any(torch.equal(row, empty) for *_, text in calls[5:] for row in text)


def test_cache_settings_are_checked(tmp_path, caches, wan_dir):
    with pytest.raises(ValueError, match=r"num_frames: cache 5, data.num_frames 9"):
        VideoDataModule(train_cache=str(caches["clean"]), val_cache=str(caches["val"]),
                        num_frames=9, resolution=(SIZE, SIZE)).setup("fit")
    with pytest.raises(ValueError, match="manifests or latent caches, not both"):
        VideoDataModule("a.csv", "b.csv", train_cache=str(caches["clean"]), val_cache="x")
    with pytest.raises(FileNotFoundError, match="run python -m vmoba.preprocess"):
        LatentCacheDataset(tmp_path)
    model = VMoBAFlowMatching(pretrained_path=str(wan_dir), vae_path=str(wan_dir),
                              text_encoder_path=str(wan_dir), text_max_length=16)
    batch = collate_cached([LatentCacheDataset(caches["val"])[0]])
    with pytest.raises(ValueError, match="24 tokens, but model.text_max_length is 16"):
        model.flow_matching_loss(batch, torch.Generator(), dropout=0.0)


def test_tiny_wan_end_to_end(tmp_path, wan_dir, caches):
    """save_pretrained -> preprocess (fixtures) -> fit 2 steps from the cache -> predict, sample."""
    run_dir = tmp_path / "run"
    common = [
        f"--config={CONFIGS / 'tiny.yaml'}", f"--config={CONFIGS / 'tiny_vae.yaml'}",
        f"--trainer.default_root_dir={run_dir}", f"--model.pretrained_path={wan_dir}",
        f"--model.vae_path={wan_dir}", f"--model.text_encoder_path={wan_dir}",
        f"--model.text_max_length={TEXT_LENGTH}", "--model.sample_scheduler=unipc",
        f"--data.train_cache={caches['mixed']}", f"--data.val_cache={caches['val']}",
        f"--data.num_frames={FRAMES}", f"--data.resolution=[{SIZE}, {SIZE}]",
    ]
    VMoBACLI(args=["fit", *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["skipped_videos"] == {"train": 2, "val": 0}
    assert all(0 < d <= 1 for d in metrics["density"].values())
    assert len(list((run_dir / "samples").glob("*.mp4"))) == 1  # after the validation at step 2

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    VMoBACLI(args=["predict", *common, f"--ckpt_path={ckpt}", "--trainer.limit_predict_batches=1"])
    predictions = sorted((run_dir / "predict" / "predictions").glob("*.mp4"))
    assert len(predictions) == 2  # one batch of the val cache

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n")
    sample_main(["--checkpoint", str(ckpt), "--prompts", str(prompts), "--out", str(tmp_path / "s"),
                 "--steps", "3"])
    settings = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert settings["scheduler"] == "UniPCMultistepScheduler"  # the checkpoint's sample_scheduler
    assert settings["shape"] == [3, FRAMES, SIZE, SIZE] and settings["latent_shape"] == [4, 2, 4, 4]
    for video in (*predictions, tmp_path / "s" / settings["videos"][0]["file"]):
        frames = decord.VideoReader(str(video))
        assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)  # decoded to pixels
