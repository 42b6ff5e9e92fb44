"""Tests of the data layer: synthetic generation, clip decoding, bad files, DataModule."""

import csv
import json
import re
import warnings
from pathlib import Path

import decord
import lightning as L
import numpy as np
import pytest
import torch

from data.datamodule import VideoDataModule
from data.sampler import EpochShuffleSampler
from data.synthetic import SyntheticManifests, ensure_synthetic_dataset
from data.video_dataset import BadVideoWarning, VideoClipDataset
from data.video_io import write_mp4

SMALL = {"num_clips": 16, "num_frames": 16, "size": 32}
CAPTION = re.compile(r"an? \w+ (circle|square|triangle) moving (left|right|up|down)")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticManifests:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), **SMALL)


def manifest_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def decode_all(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


# --- synthetic generation ---------------------------------------------------------------


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    first = ensure_synthetic_dataset(tmp_path / "a", **SMALL)
    second = ensure_synthetic_dataset(tmp_path / "b", **SMALL)
    assert first.train.read_text() == second.train.read_text()
    assert first.val.read_text() == second.val.read_text()

    train, val = manifest_rows(first.train), manifest_rows(first.val)
    assert len(train) == 14 and len(val) == 2
    assert not {r["path"] for r in train} & {r["path"] for r in val}
    for row in train + val:
        assert all(CAPTION.fullmatch(part) for part in row["caption"].split(" and ")), row
        frames = decode_all(first.train.parent / row["path"])
        assert frames.shape == (16, 32, 32, 3)
        np.testing.assert_array_equal(frames, decode_all(second.train.parent / row["path"]))


def test_synthetic_is_idempotent_and_regenerates_on_new_parameters(tmp_path: Path) -> None:
    manifests = ensure_synthetic_dataset(tmp_path, **SMALL)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]

    assert ensure_synthetic_dataset(tmp_path, **SMALL) == manifests
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    changed = {**SMALL, "num_clips": 8, "num_frames": 10}
    ensure_synthetic_dataset(tmp_path, **changed)
    clips = sorted((tmp_path / "clips").iterdir())
    assert len(clips) == 8  # clips of the larger earlier set are gone
    assert len(decode_all(clips[0])) == 10
    assert json.loads((tmp_path / ".complete.json").read_text())["num_frames"] == 10


def test_synthetic_redoes_interrupted_generation(tmp_path: Path) -> None:
    ensure_synthetic_dataset(tmp_path, **SMALL)
    # A crash leaves no marker (it is written last) and maybe a temporary file.
    (tmp_path / ".complete.json").unlink()
    leftover = tmp_path / "clips" / ".clip_00003.mp4.12345.tmp"
    leftover.write_bytes(b"partial")
    clip = tmp_path / "clips" / "clip_00000.mp4"
    before = clip.stat().st_mtime_ns

    ensure_synthetic_dataset(tmp_path, **SMALL)
    assert (tmp_path / ".complete.json").is_file()
    assert not leftover.exists()
    assert clip.stat().st_mtime_ns != before


# --- VideoClipDataset -------------------------------------------------------------------


def foreground_centroid(frame: torch.Tensor) -> torch.Tensor:
    """(x, y) centroid of pixels unlike the plain background; frame is [C, H, W]."""
    background = frame.flatten(1).median(dim=1).values[:, None, None]
    mask = (frame - background).abs().amax(dim=0) > 0.3
    yy, xx = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xx.float().mean(), yy.float().mean()])


def test_dataset_sample_shape_range_and_motion(synthetic: SyntheticManifests) -> None:
    dataset = VideoClipDataset(synthetic.train, num_frames=8, frame_stride=2, resolution=(32, 32))
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    single_shape = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        video = sample["video"]
        assert video.shape == (3, 8, 32, 32) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        assert sample["index"] == index and isinstance(sample["caption"], str)
        if " and " in sample["caption"]:
            continue
        single_shape += 1
        shift = foreground_centroid(video[:, -1]) - foreground_centroid(video[:, 0])
        step = torch.tensor(steps[sample["caption"].rsplit(" ", 1)[-1]], dtype=torch.float32)
        # In pixels: well along the captioned direction, hardly across it.
        assert shift @ step > 4 and abs(shift @ step.flip(0)) < 1, (sample["caption"], shift)
    assert single_shape >= 3


def test_dataset_is_deterministic_given_seed_and_index(synthetic: SyntheticManifests) -> None:
    def videos(seed: int) -> list[torch.Tensor]:
        dataset = VideoClipDataset(synthetic.train, num_frames=4, resolution=(32, 32), seed=seed)
        return [dataset[i]["video"] for i in range(len(dataset))]

    first, again, other = videos(0), videos(0), videos(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # Another seed moves the start frame of at least some clips.
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_resize_and_center_crop_non_square_clip(tmp_path: Path) -> None:
    # 48x96 frames: red | green | blue bands over columns [0, 24) [24, 72) [72, 96).
    frames = np.zeros((4, 48, 96, 3), dtype=np.uint8)
    frames[:, :, :24, 0] = frames[:, :, 24:72, 1] = frames[:, :, 72:, 2] = 255
    write_mp4(tmp_path / "wide.mp4", frames)
    manifest = tmp_path / "wide.csv"
    manifest.write_text("path,caption\nwide.mp4,bands\n")

    # Square target: scaled to 32x64, centre 32 columns = source columns [24, 72): all green.
    square = VideoClipDataset(manifest, num_frames=4, resolution=(32, 32))[0]["video"]
    assert square.shape == (3, 4, 32, 32)
    assert (square[:, :, :, 2:-2].argmax(dim=0) == 1).all()

    # Same aspect ratio as the source: only a resize, so all three bands survive.
    wide = VideoClipDataset(manifest, num_frames=4, resolution=(16, 32))[0]["video"]
    assert wide.shape == (3, 4, 16, 32)
    dominant = wide.argmax(dim=0)[:, :, [3, 16, 28]]  # one column inside each band
    assert (dominant == torch.tensor([0, 1, 2])).all()


def test_bad_files_are_skipped_with_one_warning_each(
    tmp_path: Path, synthetic: SyntheticManifests
) -> None:
    good = [synthetic.train.parent / row["path"] for row in manifest_rows(synthetic.train)[:3]]
    missing = tmp_path / "missing.mp4"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    short = tmp_path / "short.mp4"
    write_mp4(short, np.zeros((4, 32, 32, 3), dtype=np.uint8))

    rows = [good[0], missing, good[1], corrupt, good[2], short]
    manifest = tmp_path / "mixed.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "caption", "start_sec", "end_sec"])  # extra columns are ignored
        writer.writerows([str(path), f"clip {i}", 0, 1] for i, path in enumerate(rows))

    dataset = VideoClipDataset(manifest, num_frames=8, resolution=(32, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # a second pass must not warn again
            served = [dataset[i]["index"] for i in range(len(dataset))]
            # Bad rows fall through to the next good one, wrapping around at the end.
            assert served == [0, 2, 2, 4, 4, 0]

    messages = [str(w.message) for w in caught if issubclass(w.category, BadVideoWarning)]
    assert len(messages) == 3
    for path, reason in ((missing, "not found"), (corrupt, "cannot decode"), (short, "too short")):
        assert [m for m in messages if str(path) in m and reason in m], (path, messages)
    assert dataset.skipped == sorted([missing, corrupt, short])


def test_no_usable_file_raises_runtime_error(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"path": "nowhere.mp4", "caption": "x"}) + "\n")
    dataset = VideoClipDataset(manifest, num_frames=2)
    with pytest.warns(BadVideoWarning), pytest.raises(RuntimeError, match="none of the 1 videos"):
        dataset[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"frame_stride": 0}, "frame_stride"),
        ({"resolution": (0, 32)}, "resolution"),
        ({"resolution": (32,)}, "resolution"),
        ({"seed": -1}, "seed"),
        ({"manifest": "does/not/exist.jsonl"}, "does not exist"),
        ({"manifest": "no_caption.csv"}, "lacks columns"),
        ({"manifest": "manifest.txt"}, ".csv or .jsonl"),
    ],
)
def test_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    (tmp_path / "ok.csv").write_text("path,caption\na.mp4,a\n")
    (tmp_path / "no_caption.csv").write_text("path\na.mp4\n")
    (tmp_path / "manifest.txt").write_text("path,caption\na.mp4,a\n")
    args = {"manifest": "ok.csv", "num_frames": 4, **kwargs}
    args["manifest"] = tmp_path / args["manifest"]
    with pytest.raises(ValueError, match=match):
        VideoClipDataset(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clips": 1}, "num_clips"),
        ({"num_frames": 1}, "num_frames"),
        ({"size": 33}, "size"),
        ({"val_fraction": 0.0}, "val_fraction"),
    ],
)
def test_synthetic_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ensure_synthetic_dataset(tmp_path, **{**SMALL, **kwargs})


# --- VideoDataModule --------------------------------------------------------------------


def make_datamodule(root: Path, seed: int = 0) -> VideoDataModule:
    datamodule = VideoDataModule(
        synthetic_root=str(root),
        synthetic_num_clips=16,
        num_frames=8,
        resolution=(32, 32),
        batch_size=4,
        seed=seed,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_datamodule_batches_and_seeded_order(tmp_path: Path) -> None:
    datamodule = make_datamodule(tmp_path)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["video"].shape == (4, 3, 8, 32, 32)
    assert len(batch["caption"]) == 4 and all(isinstance(c, str) for c in batch["caption"])

    val_batch = next(iter(datamodule.val_dataloader()))
    assert val_batch["video"].shape == (2, 3, 8, 32, 32)  # 16 clips -> 2 for validation
    assert val_batch["index"].tolist() == [0, 1]  # not shuffled

    def epoch_order(dm: VideoDataModule, epoch: int) -> list[int]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["index"] for b in loader]).tolist()

    order = epoch_order(datamodule, 0)
    assert sorted(order) == list(range(14))
    assert epoch_order(make_datamodule(tmp_path), 0) == order
    assert epoch_order(datamodule, 1) != order
    assert epoch_order(make_datamodule(tmp_path, seed=1), 0) != order


def test_datamodule_requires_both_manifests_or_none() -> None:
    with pytest.raises(ValueError, match="train_manifest and val_manifest"):
        VideoDataModule(train_manifest="train.jsonl")


class _RecordBatches(L.LightningModule):
    """Trains a single scalar; records the clip indices seen in each training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        return (batch["video"].mean() - self.weight) ** 2

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert batch["video"].shape[1:] == (3, 8, 32, 32)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_under_trainer_reshuffles_per_epoch(tmp_path: Path) -> None:
    datamodule = make_datamodule(tmp_path / "synthetic", seed=5)
    model = _RecordBatches()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)

    expected = {}
    for epoch in range(2):
        sampler = EpochShuffleSampler(range(14), seed=5)
        sampler.set_epoch(epoch)
        expected[epoch] = list(sampler)[:8]
    assert model.seen == expected
    assert model.seen[0] != model.seen[1]  # Lightning advanced the sampler's epoch


def _counter_video(path: Path, frames: int = 24, fps: int = 8) -> None:
    """Frame i is a flat grey of brightness 10 * i, so decoded frames reveal their index."""
    levels = (np.arange(frames) * 10).astype(np.uint8)
    write_mp4(path, np.broadcast_to(levels[:, None, None, None], (frames, 32, 32, 3)).copy(), fps=fps)


def _frame_indices(video: torch.Tensor) -> list[int]:
    """Indices of the frames of a dataset sample of a counter video ([-1, 1] -> brightness / 10)."""
    return [round(((f.mean().item() + 1) * 127.5) / 10) for f in video.unbind(1)]


def test_segments_and_target_fps(tmp_path: Path) -> None:
    _counter_video(tmp_path / "count.mp4")  # 24 frames at 8 fps = 3 s
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,caption,start_sec,end_sec\n"
        "count.mp4,segment,1.0,2.5\n"  # frames 8 .. 19
        "count.mp4,whole,,\n"
        "count.mp4,too short,2.0,2.25\n"  # 2 frames: skipped
    )
    data = VideoClipDataset(manifest, num_frames=4, frame_stride=2, resolution=(32, 32), seed=3)
    first = _frame_indices(data[0]["video"])
    assert first[0] >= 8 and first[-1] <= 19 and np.diff(first).tolist() == [2, 2, 2]
    with pytest.warns(BadVideoWarning, match="too short: 2 frames in the clip's segment, need 7"):
        assert data[2]["caption"] == "segment"  # the bad row yields the next usable one
    at_4fps = VideoClipDataset(manifest, num_frames=5, resolution=(32, 32), target_fps=4)
    assert np.diff(_frame_indices(at_4fps[1]["video"])).tolist() == [2, 2, 2, 2]  # 8 fps / 4
    with pytest.raises(ValueError, match="target_fps must be a number > 0"):
        VideoClipDataset(manifest, num_frames=4, target_fps=0)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption,start_sec,end_sec\ncount.mp4,x,2,1\n")
    with pytest.raises(ValueError, match=r"end_sec \(1.0\) must be after start_sec \(2.0\)"):
        VideoClipDataset(bad, num_frames=4)
