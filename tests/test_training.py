"""The training entry point: CLI fit end to end, resume, bad data, configs, flow matching."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import decord
import pytest
import torch
from helpers import free_port
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from main import CALLBACKS

from data.synthetic import ensure_synthetic_dataset
from eval import run as eval_run
from vmoba.attention import block_partition
from vmoba.checkpoint_io import AtomicCheckpointIO
from vmoba.cli import VMoBACLI
from vmoba.cli import main as cli_main
from vmoba.config_check import check_blocks
from vmoba.progress import StepRichProgressBar
from vmoba.flow_matching import FROZEN_PREFIXES, shift_timesteps
from vmoba.model import VideoDiT, VMoBASettings, load_transformer
from vmoba.model.vae import LatentCodec
from vmoba.sampling import sample_videos

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "tests" / "configs" / "tiny.yaml")
MULTIGPU = REPO / "configs" / "multigpu"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_dataset(root, num_clips=16, num_frames=24)
    return root


def _args(run_dir: Path, synthetic_root: Path, *extra: str) -> list[str]:
    return [
        f"--config={TINY}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.synthetic_root={synthetic_root}",
        *extra,
    ]


def _fit(run_dir, synthetic_root, *extra, callbacks=(), ckpt_path=None):
    cli = VMoBACLI(args=_args(run_dir, synthetic_root, *extra), run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return json.loads((run_dir / "metrics.json").read_text())


class BatchOrder(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, batch["index"].tolist()))


class Crash(Exception):
    pass


class CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Crash


def test_cli_fit_writes_a_complete_run_directory(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "main.py", "fit", *_args(run_dir, synthetic_root)]
    done = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr  # none of the notices no user can act on
    notices = ("litlogger", "in eval mode", "LeafSpec", "Epoch 0/-", "weights_only")
    assert not any(n in output for n in notices)
    assert f"fit writes to {run_dir}" in output
    # 12 steps, checkpoints every 5: the end's last.ckpt replaces the periodic one (no last-v1)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    samples = list((run_dir / "samples").glob("*.mp4"))
    assert len(samples) == 2 and all(p.stat().st_size > 0 for p in samples)  # 2 validations
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 12 and metrics["attention"] == "vmoba"
    assert metrics["val_loss_end"] < metrics["val_loss_start"]
    assert set(metrics["density"]) == {"1d", "2d", "3d"}
    assert all(0 < d < 1 for d in metrics["density"].values())
    assert metrics["tokens_per_s"] > 0 and metrics["skipped_videos"] == {"train": 0, "val": 0}
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert {"train/loss", "val/loss", "train/density_2d", "train/tokens_per_s"} <= set(
        header.split(",")
    )
    assert not list((run_dir / "checkpoints").glob(".*tmp"))  # atomic writes left no temporaries
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("dit.") for k in state)  # frozen modules are rebuilt, not stored
    assert not [k for k in state if k.startswith(FROZEN_PREFIXES)]

    ckpt = f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    validated = VMoBACLI(args=["validate", *_args(run_dir, synthetic_root), ckpt])
    tested = VMoBACLI(args=["test", *_args(run_dir, synthetic_root), ckpt], callbacks=CALLBACKS)
    val_loss = validated.trainer.callback_metrics["val/loss"].item()
    test_metrics = tested.trainer.callback_metrics
    assert test_metrics["test/loss"].item() == pytest.approx(val_loss, rel=1e-6)
    assert 0 < test_metrics["test/temporal_flickering"].item() <= 1  # needs no weights
    assert "test/psnr" not in test_metrics  # no reference videos: skipped with a warning
    reference = shutil.copytree(run_dir / "test" / "test_samples", tmp_path / "reference")
    retested = VMoBACLI(args=["test", *_args(run_dir, synthetic_root), ckpt,
                              f"--test_metrics.reference_dir={reference}",
                              "--test_metrics.metrics=[psnr, ssim]"], callbacks=CALLBACKS)
    assert retested.trainer.callback_metrics["test/ssim"].item() == pytest.approx(1.0)  # same seed
    predicted = VMoBACLI(
        args=["predict", *_args(run_dir, synthetic_root), ckpt, "--trainer.limit_predict_batches=1"]
    )
    predictions = run_dir / "predict" / "predictions"  # each command in its own folder
    assert len(list(predictions.glob("*.mp4"))) == predicted.datamodule.batch_size
    assert (run_dir / "test-1" / "test_samples").is_dir()  # the second test run
    # Each sample folder lists its videos, their prompts and how they were sampled: eval.run
    # records that and scores with those prompts.
    samples = run_dir / "test" / "test_samples"
    made = json.loads((samples / "settings.json").read_text())
    assert {v["file"] for v in made["videos"]} == {p.name for p in samples.glob("*.mp4")}
    assert made["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt") and made["seed"] == 0
    report = eval_run.run(["--videos", str(samples), "--metrics", "temporal_flickering",
                           "--out", str(tmp_path / "scores.json")])
    assert report["generation"] == made
    assert report["prompts"] == {v["file"]: v["prompt"] for v in made["videos"]}


@pytest.mark.parametrize("strategy,samples", [("ddp", 0), ("ulysses", 1)])
def test_two_process_cli_fit(tmp_path, synthetic_root, strategy, samples):
    """configs/multigpu/<strategy>.yaml on 2 CPU processes (gloo) instead of every GPU."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is unavailable")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "main.py", "fit", *_args(run_dir, synthetic_root),
           f"--config={MULTIGPU / strategy}.yaml", "--trainer.accelerator=cpu",
           "--trainer.devices=2", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
           f"--model.num_samples={samples}"]
    if strategy == "ulysses":  # its one replica reads the single-process order (compared below)
        cmd.append("--trainer.use_distributed_sampler=false")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=240)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["val_loss_end"] > 0
    assert all(0 < d < 1 for d in metrics["density"].values())
    assert len(list((run_dir / "samples").glob("*.mp4"))) == samples  # the group's rank 0 wrote
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    if strategy == "ulysses":  # one replica split over 2 ranks: the same run as one process
        alone = _fit(tmp_path / "alone", synthetic_root, "--trainer.max_steps=2",
                     "--trainer.val_check_interval=2", "--model.num_samples=0")
        for key in ("train_loss", "train_loss_last", "val_loss_end"):
            assert metrics[key] == pytest.approx(alone[key], rel=1e-5), key
        weights = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
                   for d in (run_dir, tmp_path / "alone"))
        split, single = weights
        assert all(torch.allclose(split[k], single[k], rtol=1e-4, atol=1e-6) for k in single)


def test_cli_destroys_its_process_group_after_a_clean_run(tmp_path, synthetic_root):
    """A gloo group left to interpreter shutdown can abort the process (SIGABRT) after fit."""
    VMoBACLI(args=["fit", *_args(tmp_path / "run", synthetic_root), "--trainer.strategy=ddp",
                   "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_steps=1",
                   "--trainer.limit_val_batches=0", "--model.num_samples=0"])
    assert not torch.distributed.is_initialized()


def test_ulysses_strategy_gives_each_group_its_share_of_the_data(monkeypatch):
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vmoba.parallel.strategy import UlyssesStrategy

    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)  # set_global_rank sets it
    environment = LightningEnvironment()
    environment.set_world_size(8)
    environment.set_global_rank(5)
    strategy = UlyssesStrategy(sequence_parallel=2, cluster_environment=environment)
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 4, "rank": 2}
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="sequence_parallel must be an int >= 1"):
            UlyssesStrategy(sequence_parallel=bad)


def test_checkpoints_are_replaced_atomically(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(Exception):  # a save that dies half-way (lambdas do not pickle)
        io.save_checkpoint({"step": 2, "bad": lambda: None}, path)
    assert io.load_checkpoint(path) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, synthetic_root):
    straight = BatchOrder()
    expected = _fit(tmp_path / "a", synthetic_root, "--model.num_samples=0", callbacks=[straight])
    with pytest.raises(Crash):  # checkpoints at steps 5 and 10; crash in step 8 (epoch 1)
        _fit(tmp_path / "b", synthetic_root, "--model.num_samples=0", callbacks=[CrashAtStep(8)])
    resumed = BatchOrder()
    result = _fit(
        tmp_path / "b",
        synthetic_root,
        "--model.num_samples=0",
        callbacks=[resumed],
        ckpt_path="last",
    )
    assert resumed.seen[0][0] == 5  # restarted from the step-5 checkpoint, mid-epoch 0
    assert resumed.seen == straight.seen[5:]  # the same batches in the same order
    assert result["train_loss_last"] == pytest.approx(expected["train_loss_last"], rel=1e-5)
    assert result["val_loss_end"] == pytest.approx(expected["val_loss_end"], rel=1e-5)


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


FOLDER_NOTICES = ("dirpath has changed", "exists and is not empty")
"""Lightning's warnings about checkpoint folders, which one folder per command makes moot."""


def test_follow_up_commands_leave_the_run_as_it_was(tmp_path, synthetic_root):
    """validate, predict, a full-attention baseline and a mistyped checkpoint after a fit: the
    run's files stay byte-identical, each command writes its own folder (and no warning about
    checkpoint folders)."""
    run = tmp_path / "run"
    common = _args(run, synthetic_root, "--trainer.max_steps=6", "--model.num_samples=1")
    VMoBACLI(args=["fit", *common])
    before = _files(run)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning, unless the CLI silences it
        VMoBACLI(args=["validate", *common, "--ckpt_path=last"])
        VMoBACLI(args=["predict", *common, "--ckpt_path=last"])
    VMoBACLI(args=["fit", *common, "--model.attention.mode=full"])
    with pytest.raises(ValueError, match="no such checkpoint file"):
        VMoBACLI(args=["validate", *common, f"--ckpt_path={run / 'typo.ckpt'}"])
    after = _files(run)
    assert {k: v for k, v in after.items() if k.parts[0] not in ("validate", "predict")} == before
    assert (run / "validate" / "metrics.csv").is_file()
    assert list((run / "validate" / "samples").glob("step000006_*.mp4"))  # the checkpoint's step
    assert list((run / "predict" / "predictions").glob("*.mp4"))
    assert json.loads((tmp_path / "run-1" / "metrics.json").read_text())["attention"] == "full"
    assert not (run / "validate-1").exists()  # the failed command made nothing
    assert not [str(w.message) for w in seen if any(n in str(w.message) for n in FOLDER_NOTICES)]


def test_resume_appends_to_the_run(tmp_path, synthetic_root):
    run = tmp_path / "run"
    common = _args(run, synthetic_root, "--model.num_samples=0")
    VMoBACLI(args=["fit", *common, "--trainer.max_steps=6"])
    config, rows = (run / "config.yaml").read_bytes(), (run / "metrics.csv").read_text()
    first = json.loads((run / "metrics.json").read_text())
    start = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning, unless the CLI silences it
        VMoBACLI(args=["fit", *common, "--trainer.max_steps=12", "--ckpt_path=last"])
    assert not [str(w.message) for w in seen if any(n in str(w.message) for n in FOLDER_NOTICES)]
    assert (run / "config.yaml").read_bytes() == config
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["train_steps"] == 6 + 12 - start  # steps run, a re-run one counted again
    assert resumed["val_loss_start"] == first["val_loss_start"]
    before = _files(run)
    VMoBACLI(args=["fit", *common, "--trainer.max_steps=12", "--ckpt_path=last"])  # finished
    after = _files(run)  # only files of its own were added (its config, a tensorboard file)
    assert {k: v for k, v in after.items() if k in before} == before
    assert "max_steps: 12" in (run / "config-resumed.yaml").read_text()
    now = (run / "metrics.csv").read_text()
    first_rows = rows.splitlines()[1:]
    assert all(row in now for row in first_rows)  # nothing lost (the columns did not change)
    assert len(now.splitlines()) > len(rows.splitlines())
    assert not (tmp_path / "run-1").exists()


def test_resume_without_a_checkpoint_fails_before_any_work(tmp_path, synthetic_root):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="no last\\*.ckpt"):
        VMoBACLI(args=["fit", *_args(run, synthetic_root), "--ckpt_path=last"])
    assert not run.exists()


@pytest.mark.parametrize("option,message", [
    ("--model.attention.block_2d=[40, 40]", "--model.attention.block_2d: block (40, 40)"),
    ("--model.attention.threshold=1.5", "--model.attention: threshold must be"),
    ("--model.vae_path=/no/such/wan", "--model.vae_path /no/such/wan: no such folder"),
    ("--data.train_manifest=MANIFEST", "--data.train_manifest"),
    ("--data.train_manifest=CORRUPT", "--data.train_manifest"),  # files that exist, none decodes
    ("--ckpt_path=last", "--ckpt_path last: no last*.ckpt"),
    ("--trainer.max_stesp=3", "unknown option --trainer.max_stesp (did you mean "
                              "--trainer.max_steps?)"),  # a typo: the closest key, no usage
    ("--model.atention.mode=full", "unknown option --model.atention.mode (did you mean "
                                   "--model.attention.mode?)"),
    ("--data.synthetic=scenes|--data.num_frames=1",  # '|' separates two options
     "--data.synthetic scenes: num_frames must be >= 2"),
])
def test_bad_configuration_fails_in_one_line_before_any_work(tmp_path, capsys, option, message):
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path,caption\nmissing.mp4,a clip\n")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 100)
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text("path,caption\ncorrupt.mp4,a clip\nmissing.mp4,another\n")
    run = tmp_path / "run"
    option = option.replace("MANIFEST", str(manifest)).replace("CORRUPT", str(corrupt))
    args = [f"--trainer.default_root_dir={run}", *option.split("|")]
    if "manifest" in option:
        args.append(f"--data.val_manifest={manifest}")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *args], callbacks=CALLBACKS)
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(error) == 1 and error[0].startswith(f"error: {message}")
    assert "CORRUPT" not in option or "none of its 2 clips is usable" in error[0]
    assert not run.exists()


def test_a_mistyped_key_in_a_config_file_names_the_closest_option(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  attention:\n    mdoe: full\n")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", f"--config={config}", f"--trainer.default_root_dir={tmp_path / 'run'}"])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and error == [
        "error: unknown option --model.attention.mdoe (did you mean --model.attention.mode?); "
        "every option: --help"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("old,new", [
    ("test_metrics: [psnr]", "--model.test_metrics is now --test_metrics.metrics"),
    ("metric_weights: {clip: CLIP}", "--model.metric_weights is now --test_metrics.weights"),
    ("test_reference_dir: DIR", "--model.test_reference_dir is now --test_metrics.reference_dir"),
    ("attention.attention: full", "--model.attention.attention is now --model.attention.mode"),
])
def test_moved_options_name_their_new_keys(tmp_path, capsys, old, new):
    """Options that moved (the test metrics left the model, the attention's full/vmoba switch is
    its mode): given the old way, on the command line or in a config file, each fails in one line
    naming its new key."""
    key, _, value = old.partition(": ")
    config = tmp_path / "old.yaml"
    *groups, name = key.split(".")
    nested = "".join(f"{'  ' * (i + 1)}{g}:\n" for i, g in enumerate(groups))
    config.write_text(f"model:\n{nested}{'  ' * (len(groups) + 1)}{name}: {value}\n")
    for option in (f"--model.{key}={value}", f"--config={config}"):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["test", f"--trainer.default_root_dir={tmp_path / 'run'}", option],
                     callbacks=CALLBACKS)
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and error == [f"error: {new}"]
    assert not (tmp_path / "run").exists()


class SigtermAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster's time limit sends it


def test_sigterm_leaves_a_checkpoint_of_the_interrupted_step(tmp_path, synthetic_root):
    run = tmp_path / "run"
    with pytest.raises(SIGTERMException):  # Lightning finishes step 7, then stops
        _fit(run, synthetic_root, "--model.num_samples=0", callbacks=[SigtermAtStep(7)])
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8  # not the step-5 checkpoint: nothing after it is lost
    resumed = BatchOrder()
    _fit(run, synthetic_root, "--model.num_samples=0", callbacks=[resumed], ckpt_path="last")
    assert resumed.seen[0][0] == 8


def test_kill_9_loses_at_most_one_checkpoint_interval(tmp_path, synthetic_root):
    """A real ``kill -9`` of ``python main.py fit``: ``--ckpt_path last`` then resumes from the
    newest periodic ``last.ckpt`` (every 5 steps in tests/configs/tiny.yaml, 10 in the default)."""
    run = tmp_path / "run"
    args = _args(run, synthetic_root, "--model.num_samples=0", "--trainer.max_steps=10000",
                 "--trainer.limit_val_batches=0")
    fit = subprocess.Popen([sys.executable, "main.py", "fit", *args], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while not last.is_file() and time.monotonic() < deadline and fit.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # a few steps past the checkpoint
    finally:
        fit.send_signal(signal.SIGKILL)
        fit.wait()
    assert fit.returncode == -signal.SIGKILL and last.is_file()
    saved = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved > 0 and saved % 5 == 0
    assert not list(last.parent.glob("*.tmp*"))  # no half-written file beside it
    resume = _args(run, synthetic_root, "--model.num_samples=0", "--trainer.limit_val_batches=0",
                   f"--trainer.max_steps={saved + 2}", "--ckpt_path=last")
    VMoBACLI(args=["fit", *resume])  # as the user resumes: the CLI finds last.ckpt
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and metrics["global_step"] == saved + 2


class StepLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_metrics_json_reports_means_over_the_fit(tmp_path, synthetic_root):
    seen = StepLosses()
    metrics = _fit(tmp_path / "run", synthetic_root, "--model.num_samples=0",
                   "--trainer.max_steps=6", callbacks=[seen])
    assert metrics["train_steps"] == 6
    assert metrics["train_loss"] == pytest.approx(sum(seen.losses) / 6, rel=1e-5)
    assert metrics["train_loss_last"] == pytest.approx(seen.losses[-1], rel=1e-5)
    tokens_per_step = 4 * 16 * 16 * 2  # tiny.yaml grid x batch 2
    assert metrics["train_tokens"] == 6 * tokens_per_step
    # a run-long rate: all the run's tokens over the seconds of all its steps, not one step's
    assert metrics["tokens_per_s"] == pytest.approx(
        metrics["train_tokens"] / metrics["train_seconds"], rel=1e-12
    )
    assert set(metrics["definitions"]) >= {"train_loss", "tokens_per_s"}


def test_progress_lines_when_output_is_not_a_terminal(tmp_path, synthetic_root, capsys):
    run = tmp_path / "run"
    VMoBACLI(args=["fit", *_args(run, synthetic_root, "--trainer.enable_progress_bar=true")])
    out = capsys.readouterr().out  # captured: not a terminal
    assert "step 12/12 | train/loss" in out and "s/step" in out
    assert "validation at step 6 done" in out and "validation at step 12 done" in out
    ckpt = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    for command in ("test", "predict", "validate"):  # test/predict's hooks once hit an assertion
        extra = [ckpt, f"--trainer.limit_{command}_batches=1", "--trainer.enable_progress_bar=true"]
        if command == "validate":
            extra[1] = "--trainer.limit_val_batches=1"
        VMoBACLI(args=[command, *_args(run, synthetic_root), *extra])
    out = capsys.readouterr().out
    assert "predict done in" in out
    assert "validation at step 12 done" in out  # validate names the checkpoint's step, not 0


def test_rich_bar_describes_a_run_bounded_by_steps():
    bar = StepRichProgressBar()
    bar._trainer = SimpleNamespace(max_steps=300, max_epochs=-1)  # as Lightning sets them
    assert bar._get_train_description(0) == "Epoch 0 of max_steps 300"  # not "Epoch 0/-2"


def test_progress_bar_can_be_turned_off_with_the_default_callbacks(tmp_path):
    args = [f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    cli = VMoBACLI(args=args, run=False)  # the default config lists a RichProgressBar
    assert cli.trainer.progress_bar_callback is None


def test_full_attention_baseline_from_the_same_config(tmp_path, synthetic_root):
    metrics = _fit(
        tmp_path / "full",
        synthetic_root,
        "--model.attention.mode=full",
        "--model.num_samples=0",
        "--trainer.max_steps=3",
    )
    assert metrics["attention"] == "full" and metrics["density"] == {}


def test_bf16_mixed_fit_on_the_cpu(tmp_path, synthetic_root):
    """``--trainer.precision bf16-mixed`` on the CPU: VMoBA's CPU backend under autocast trains,
    validates and samples (its attention and gates stay float32 inside the autocast region)."""
    metrics = _fit(
        tmp_path / "bf16", synthetic_root, "--trainer.precision=bf16-mixed",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2",
    )
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss_end"])
    assert 0 < min(metrics["density"].values()) < 1


def _manifest(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, c in rows))
    return str(path)


def test_bad_videos_are_skipped_and_counted(tmp_path, synthetic_root):
    good = [json.loads(line) for line in (synthetic_root / "train.jsonl").read_text().splitlines()]
    good_rows = [(str(synthetic_root / g["path"]), g["caption"]) for g in good[:8]]
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 100)
    bad_rows = [(str(tmp_path / "missing.mp4"), "gone"), (str(tmp_path / "corrupt.mp4"), "noise")]
    train = _manifest(tmp_path / "train.jsonl", good_rows[:4] + bad_rows + good_rows[4:])
    val = _manifest(tmp_path / "val.jsonl", good_rows[:2])
    metrics = _fit(
        tmp_path / "run",
        synthetic_root,
        f"--data.train_manifest={train}",
        f"--data.val_manifest={val}",
        "--model.num_samples=0",
        "--trainer.max_steps=6",
        "--trainer.val_check_interval=3",
    )
    assert metrics["global_step"] == 6
    assert metrics["skipped_videos"] == {"train": 2, "val": 0}

    all_bad = _manifest(tmp_path / "bad.jsonl", bad_rows)
    with pytest.raises(ValueError, match="none of its 2 clips is usable"):  # before any work
        _fit(
            tmp_path / "bad",
            synthetic_root,
            f"--data.train_manifest={all_bad}",
            f"--data.val_manifest={all_bad}",
            "--model.num_samples=0",
        )


def test_default_config_builds():
    cli = VMoBACLI(args=["--trainer.logger=false"], run=False)
    assert isinstance(cli.model.dit, VideoDiT)
    assert cli.trainer.precision == ("bf16-mixed" if torch.cuda.is_available() else "32-true")


class ParseOnly(VMoBACLI):
    """Parses and type-checks a config, and checks its blocks against its token grid, without
    building models or reading paths (the Wan configs need local weights)."""

    def before_instantiate_classes(self) -> None:
        check_blocks(self.config.model, self.config.data)

    def instantiate_classes(self) -> None:
        pass


# Table 4: latent grid (after the 4x8x8 VAE and the 1x2x2 patch) -> blocks per 1D/2D/3D layer.
PAPER_BLOCKS = {
    "93x576x1024": ((24, 36, 64), (8, 48, 72)),
    "141x480x832": ((36, 30, 52), (12, 24, 36)),
    "81x480x832": ((21, 30, 52), (7, 24, 72)),
    "81x720x1280": ((21, 45, 80), (7, 40, 36)),
}


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(config):
    cfg = ParseOnly(args=[f"--config={config}"], run=False).config
    assert cfg.trainer.max_steps > 0 and cfg.data.num_frames >= 1
    setting = next((k for k in PAPER_BLOCKS if k in config.name), None)
    if setting is None:
        return
    grid, blocks = PAPER_BLOCKS[setting]
    frames, (height, width) = cfg.data.num_frames, cfg.data.resolution
    assert ((frames - 1) // 4 + 1, height // 16, width // 16) == grid
    attention = VMoBASettings(**cfg.model.attention.as_dict())
    counts = tuple(block_partition(grid, attention.block(kind)).num_blocks for kind in ("1d", "2d", "3d"))
    assert counts == blocks
    assert cfg.model.pretrained_path == cfg.model.vae_path == cfg.model.text_encoder_path == "WAN_DIR"
    if "trainingfree" in config.name:  # Table 4's k per layer kind, "Local + TopK"
        k = {"81x480x832": [2, 6, 18], "81x720x1280": [2, 10, 9]}[setting]
        assert (attention.select, attention.scope, attention.topk) == ("topk", "query_head", k)
    else:  # the trained "Global + Threshold"; the baselines are full attention
        expected = "full" if config.stem.endswith("_full") else "vmoba"
        assert (attention.mode, attention.select, attention.scope, attention.threshold) == (
            expected, "threshold", "head_global", 0.25)


def test_default_run_loses_at_most_ten_steps_to_a_kill():
    """``kill -9`` cannot be caught: what survives it is the newest periodic ``last.ckpt``
    (the crash test above resumes from one); SIGTERM and the end of training write one too."""
    callbacks = ParseOnly(args=[], run=False).config.trainer.callbacks
    last = [c.init_args for c in callbacks
            if c.class_path.endswith("ModelCheckpoint") and c.init_args.save_last]
    assert len(last) == 1 and last[0].every_n_train_steps <= 10
    assert last[0].enable_version_counter is False  # one last.ckpt, not last-v1.ckpt beside it
    assert any(c.class_path == "vmoba.checkpoint_io.LastCheckpoint" for c in callbacks)


def test_latent_cache_overlay_on_a_paper_config():
    paper = REPO / "configs" / "wan2.1_1.3b_93x576x1024_vmoba.yaml"
    overlay = REPO / "configs" / "latent_cache.yaml"
    cfg = ParseOnly(args=[f"--config={paper}", f"--config={overlay}"], run=False).config
    assert (cfg.data.train_manifest, cfg.data.val_manifest) == (None, None)
    assert (cfg.data.train_cache, cfg.data.val_cache) == ("TRAIN_CACHE", "VAL_CACHE")
    assert (cfg.data.num_frames, tuple(cfg.data.resolution)) == (93, (576, 1024))


@pytest.mark.parametrize("snippet", sorted(MULTIGPU.glob("*.yaml")), ids=lambda p: p.name)
def test_multigpu_configs_layer_on_a_paper_setting(snippet):
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    setting = REPO / "configs" / "wan2.1_1.3b_93x576x1024_vmoba.yaml"
    cfg = ParseOnly(args=[f"--config={setting}", f"--config={snippet}"], run=False).config
    strategy = cfg.trainer.strategy
    assert cfg.trainer.devices == -1 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.num_frames == 93 and cfg.model.attention.block_2d == [6, 8]  # setting kept
    classes = {"ddp": "lightning.pytorch.strategies.DDPStrategy",
               "fsdp": "lightning.pytorch.strategies.FSDPStrategy",
               "ulysses": "vmoba.parallel.strategy.UlyssesStrategy"}
    assert strategy.class_path == classes[snippet.stem]
    if snippet.stem == "fsdp":  # one FSDP unit and one checkpointed region per block
        assert strategy.init_args.auto_wrap_policy == {WanTransformerBlock}
        assert strategy.init_args.activation_checkpointing_policy == {WanTransformerBlock}
        assert cfg.model.gradient_checkpointing is False  # not twice
    else:
        assert strategy.init_args.gradient_as_bucket_view and cfg.model.gradient_checkpointing
    if snippet.stem == "ulysses":  # Wan 1.3B: 12 heads; 24 x 36 x 64 latent tokens
        assert 12 % strategy.init_args.sequence_parallel == 0
        assert (24 * 36 * 64) % strategy.init_args.sequence_parallel == 0


def test_shifted_timesteps():
    u = torch.linspace(0, 1, 11)
    t = shift_timesteps(u, 3.0)
    assert t[0] == 0 and t[-1] == 1 and (t[1:-1] > u[1:-1]).all()  # shift > 1 favours noise
    assert torch.equal(shift_timesteps(u, 1.0), u)


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_sampling_runs_dense_for_the_first_quarter_of_steps(scheduler):
    torch.manual_seed(0)
    dit = VideoDiT(load_transformer(), VMoBASettings())
    modes = []
    original = dit.forward
    dit.forward = lambda *a: (modes.append(dit.processors[0].dense), original(*a))[1]
    text = torch.randn(2, 8, 64)
    videos = sample_videos(
        dit,
        text,
        torch.zeros(1, 8, 64),
        (3, 4, 16, 16),
        steps=8,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(0),
    )
    assert modes == [True, True] + [False] * 6
    assert videos.shape == (2, 3, 4, 16, 16) and videos.abs().max() <= 1


def test_sample_command_writes_videos_and_settings(tmp_path, synthetic_root, capsys):
    from vmoba.sample import main as sample_main

    run_dir = tmp_path / "run"
    _fit(run_dir, synthetic_root, "--model.num_samples=0", "--trainer.max_steps=2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na green/blue square moving up\n")
    out = tmp_path / "samples"
    sample_main(["--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--prompts", str(prompts),
                 "--out", str(out), "--steps", "4"])
    settings = json.loads((out / "settings.json").read_text())
    files = [v["file"] for v in settings["videos"]]
    assert files == ["000_a_red_circle_moving_left.mp4", "001_a_green_blue_square_moving_up.mp4"]
    assert all((out / f).stat().st_size > 0 for f in files)
    assert settings["shape"] == [3, 4, 32, 32] and settings["layer_kinds"] == ["1d", "2d", "3d"]
    assert all(0 < d <= 1 for v in settings["videos"] for d in v["layer_density"])
    assert "[2/2] 001_a_green_blue_square_moving_up.mp4" in capsys.readouterr().out  # progress
    assert settings["precision"] == "fp32"  # CPU; bf16 autocast on CUDA


def test_fit_on_wan_vae_latents(tmp_path, synthetic_root):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0])
    vae.save_pretrained(tmp_path / "wan" / "vae")  # a pipeline root, as diffusers writes it
    run_dir = tmp_path / "run"
    metrics = _fit(run_dir, synthetic_root, f"--config={REPO / 'tests/configs/tiny_vae.yaml'}",
                   f"--model.vae_path={tmp_path / 'wan'}", "--trainer.max_steps=4",
                   "--trainer.val_check_interval=4", "--model.num_samples=1")
    assert metrics["global_step"] == 4 and metrics["tokens_per_s"] > 0
    assert all(0 < d <= 1 for d in metrics["density"].values())
    frames = decord.VideoReader(str(next((run_dir / "samples").glob("*.mp4"))))
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)  # decoded back to pixels
    with pytest.raises(FileNotFoundError, match="no Wan VAE"):
        LatentCodec.from_pretrained(tmp_path / "missing")


def test_plots_of_a_trained_run(tmp_path, synthetic_root):
    from eval.plots.density import plot as plot_density
    from eval.plots.density import read_densities
    from eval.plots.selection import plot_checkpoint

    run_dir = tmp_path / "run"
    _fit(run_dir, synthetic_root, "--model.num_samples=0", "--trainer.max_steps=5")
    series = read_densities(run_dir / "metrics.csv")
    assert set(series) == {"1d", "2d", "3d"} and all(0 < v <= 1 for _, vs in series.values() for v in vs)
    plot_density(run_dir, tmp_path / "density.png")
    plot_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "selection.png", "a red circle", 0.5, 0, 0)
    assert (tmp_path / "density.png").stat().st_size > 0 and (tmp_path / "selection.png").stat().st_size > 0
