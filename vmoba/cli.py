"""``python main.py fit|validate|test|predict`` on LightningCLI; ``configs/default.yaml`` by default."""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from data.datamodule import VideoDataModule
from vmoba.callbacks import RunSummary, ValidationSamples
from vmoba.config_check import ConfigError, check_run_config
from vmoba.flow_matching import VMoBAFlowMatching

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

class _NoAdverts(logging.Filter):
    """Drops Lightning's start-up advert for its cloud logger: nothing a user of this repo acts on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def silence_moot_warnings() -> None:
    """Filter out the warnings no user of this CLI can act on: the frozen text encoder and VAE
    are in eval mode on purpose; a deprecation inside Lightning; and two that one folder per
    command brings (validate/test/predict load a checkpoint whose ModelCheckpoint wrote to the
    run's folder, and a resumed fit saves into its own checkpoint folder). Called by every
    :class:`VMoBACLI`, so a caller's reset of the filters does not bring them back."""
    for message in (
        r"Found \d+ module\(s\) in eval mode at the start",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"The dirpath has changed from",
        r"Checkpoint directory .* exists and is not empty",
    ):
        warnings.filterwarnings("ignore", message=message)


# Lets configs write ${trainer.default_root_dir} although each subcommand nests them (fit.trainer...).
set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


FOLDER_ENV = "VMOBA_COMMAND_FOLDER"
"""Environment variable through which rank 0 hands its command folder to the ranks it launches."""


def free_folder(path: Path) -> Path:
    """``path`` if it is absent or empty, else the first absent or empty ``<path>-1``,
    ``<path>-2``, ..."""
    candidate, number = path, 0
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def command_folder(root: Path, subcommand: str, resume: bool) -> Path:
    """Where a command writes, so that no command overwrites what an earlier one wrote.

    - ``fit``: a new run writes to ``root`` if it is free, else to ``root-1``, ``root-2``, ...;
      a resumed run (``--ckpt_path``) continues in ``root``, appending to its logs.
    - ``validate``, ``test``, ``predict``: ``root/<command>``, ``root/<command>-1``, ..., so the
      run's own files (checkpoints, logs, config, samples, ``metrics.json``) stay as they are.
    """
    if subcommand == "fit":
        return root if resume else free_folder(root)
    return free_folder(root / subcommand)


def last_checkpoint(root: Path) -> Path:
    """The newest ``last*.ckpt`` under ``root/checkpoints``; a :class:`ConfigError` naming the
    folder when there is none (resuming would otherwise start from step 0)."""
    found = sorted((root / "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"--ckpt_path last: no last*.ckpt in {root / 'checkpoints'}; give a checkpoint file, "
            "or leave --ckpt_path out to start a new run"
        )
    return found[-1]


def resolve_checkpoint(ckpt_path: Optional[str], root: Path) -> Optional[str]:
    """``--ckpt_path`` as a file: ``last`` -> :func:`last_checkpoint`; other names Lightning
    resolves itself (``best``, ``hpc``, ``registry``); a path must exist."""
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry"):
        return ckpt_path
    if ckpt_path == "last":
        return str(last_checkpoint(root))
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return ckpt_path


def move_paths(node: Any, old: Path, new: Path) -> Any:
    """``node`` (a config: namespaces, dicts, lists) with every string path at or below ``old``
    moved to the same place below ``new``."""
    if isinstance(node, Namespace):
        for key, value in vars(node).items():
            setattr(node, key, move_paths(value, old, new))
        return node
    if isinstance(node, dict):
        return {key: move_paths(value, old, new) for key, value in node.items()}
    if isinstance(node, list):
        return [move_paths(value, old, new) for value in node]
    if isinstance(node, (str, Path)):
        path = Path(node)
        if path == old or old in path.parents:
            return type(node)(new / path.relative_to(old))
    return node


def progress_callbacks(callbacks: Optional[list], enabled: Optional[bool], terminal: bool):
    """The configured callbacks with the progress bar the output needs: none when
    ``--trainer.enable_progress_bar false`` (Lightning refuses a bar callback then); plain lines
    (:class:`vmoba.progress.LineProgressBar`, in place of any bar) when the output is not a
    terminal, where a redrawn bar shows nothing; else as configured."""
    callbacks = list(callbacks or [])
    bars = [c for c in callbacks if str(c.get("class_path", "")).endswith("ProgressBar")]
    if enabled is False:
        return [c for c in callbacks if c not in bars]
    if terminal:
        return callbacks
    line = Namespace(class_path="vmoba.progress.LineProgressBar", init_args=Namespace())
    return [c for c in callbacks if c not in bars] + [line]


MOVED_OPTIONS = {
    "model.test_metrics": "test_metrics.metrics",
    "model.metric_weights": "test_metrics.weights",
    "model.test_reference_dir": "test_metrics.reference_dir",
    "model.attention.attention": "model.attention.mode",
}
"""Options that moved (old key -> new key): test-time scoring is a callback of eval's, which
``main.py`` adds under ``test_metrics``; full attention or VMoBA is the attention's ``mode``."""


def moved_option(message: str) -> Optional[str]:
    """For a parse error about an option of :data:`MOVED_OPTIONS`, given on the command line or in
    a config file, a message naming its new key; else None."""
    for old, new in MOVED_OPTIONS.items():
        group, _, name = old.rpartition(".")
        unknown = f"Group '{group}' does not accept option '{name}'" in message
        in_group = f'Parser key "{group}"' in message
        nested = in_group and f"Option '{name}' is not accepted" in message
        if old in message or unknown or nested:
            return f"--{old} is now --{new}"
    return None


def unknown_options(message: str) -> list[str]:
    """The keys a parse error calls unknown (``trainer.max_stesp``), on the command line or in a
    config file; empty for other errors."""
    if message.startswith("unrecognized arguments:"):
        tokens = message.partition(":")[2].split()
        return [t[2:].partition("=")[0] for t in tokens if t.startswith("--")]
    nested = re.search(r'Parser key "([\w.]+)".*?Option \'(\w+)\' is not accepted', message, re.S)
    if nested:
        return [f"{nested.group(1)}.{nested.group(2)}"]
    group = re.search(r"(Subcommand|Group) '([\w.]+)' does not accept option '([\w.]+)'", message)
    if group:
        return [group.group(3) if group.group(1) == "Subcommand" else ".".join(group.group(2, 3))]
    return []


def did_you_mean(key: str, parser: LightningArgumentParser) -> str:
    """``--key`` and the closest option the parser accepts (``--a (did you mean --b?)``)."""
    try:
        known = {k.replace(".init_args.", ".") for k in parser.get_defaults().keys()}
    except Exception:  # defaults that do not parse: name the key alone
        known = set()
    known |= {o[2:] for o in parser._option_string_actions if o.startswith("--")}
    known = [k for k in known if "__" not in k and not k.endswith(".class_path")]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"--{key} (did you mean --{close[0]}?)" if close else f"--{key}"


class VMoBAParser(LightningArgumentParser):
    """Lightning's parser, raising a :class:`ConfigError` for an option that moved
    (:func:`moved_option`) or one it does not know (:func:`did_you_mean`) instead of printing
    the usage."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        moved = moved_option(message)
        if moved is not None:
            raise ConfigError(moved)
        unknown = unknown_options(message)
        if unknown:
            parser = self
            subcommand = re.match(r"Subcommand '(\w+)'", message)
            subcommands = getattr(self, "_subcommands_action", None)
            if subcommand and subcommands is not None:
                parser = subcommands._name_parser_map.get(subcommand.group(1), self)
            named = ", ".join(did_you_mean(key, parser) for key in unknown)
            raise ConfigError(f"unknown option {named}; every option: --help")
        super().error(message, ex)


class VMoBACLI(LightningCLI):
    """LightningCLI with the default config, omegaconf interpolation (resolved after command-line
    overrides), precision chosen by device when unset (bf16-mixed on GPU, fp32 on CPU), and one
    folder per command (:func:`command_folder`): no command overwrites an earlier one's files.

    Every trainer gets :class:`~vmoba.callbacks.RunSummary` and
    :class:`~vmoba.callbacks.ValidationSamples`, whatever callbacks a config lists.

    Args:
        args: command-line arguments (None: ``sys.argv``).
        run: run the subcommand (False: parse one config and build its objects, no subcommand).
        callbacks: more callback classes by config key, each configured under its key
            (``{"test_metrics": TestVideoMetrics}``: ``--test_metrics.metrics [psnr]``); how the
            layers above vmoba (``main.py``) add theirs.
    """

    def __init__(
        self,
        args=None,
        run: bool = True,
        callbacks: Optional[dict[str, type[Callback]]] = None,
    ) -> None:
        silence_moot_warnings()
        self.extra_callbacks = dict(callbacks or {})
        defaults = {"default_config_files": [str(DEFAULT_CONFIG)], "parser_mode": "omegaconf+"}
        # With subcommands, each subcommand's parser reads the default config; without (run=False),
        # the main parser does.
        subcommands = ("fit", "validate", "test", "predict")
        parser_kwargs = {"parser_mode": "omegaconf+", **dict.fromkeys(subcommands, defaults)}
        super().__init__(
            VMoBAFlowMatching,
            VideoDataModule,
            parser_class=VMoBAParser,
            parser_kwargs=parser_kwargs if run else defaults,
            trainer_defaults={"callbacks": [RunSummary(), ValidationSamples()]},
            # commands never overwrite a config (see _choose_folder); without one (run=False,
            # scripts and tests) the caller picks the folders
            save_config_kwargs={"overwrite": not run},
            args=args,
            run=run,
        )
        if run and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning destroys only NCCL groups at exit. A gloo group left to interpreter
            # shutdown can abort the process ("terminate called without an active exception",
            # pytorch/pytorch#190489), so every rank tears its groups down after a clean run.
            torch.distributed.destroy_process_group()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key, callback in self.extra_callbacks.items():
            parser.add_lightning_class_args(callback, key)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_run_config(config.model, config.data)  # before anything is built or written
        if self.subcommand:
            self._choose_folder(config)
        config.trainer.callbacks = progress_callbacks(
            config.trainer.callbacks, config.trainer.enable_progress_bar, sys.stdout.isatty()
        )
        if config.trainer.precision is None:
            gpu = (
                config.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
            )
            config.trainer.precision = "bf16-mixed" if gpu else "32-true"

    def _choose_folder(self, config: Namespace) -> None:
        """Point this command's outputs at its own folder (every path under the configured
        ``default_root_dir`` moves with it) and resolve ``--ckpt_path last`` against the run."""
        root = Path(config.trainer.default_root_dir)
        config.ckpt_path = resolve_checkpoint(config.get("ckpt_path"), root)
        resume = self.subcommand == "fit" and config.ckpt_path is not None
        launched = os.environ.get("LOCAL_RANK", "0") != "0" and FOLDER_ENV in os.environ
        # a rank that Lightning launched takes rank 0's choice: by its start rank 0 may have
        # written into the folder, which would look taken
        folder = Path(os.environ[FOLDER_ENV]) if launched else command_folder(
            root, self.subcommand, resume
        )
        os.environ[FOLDER_ENV] = str(folder)  # inherited by the ranks launched from here
        if folder != root:
            move_paths(config.trainer, root, folder)
        rank_zero_info(f"{self.subcommand} writes to {folder}")
        if resume:  # the run's config.yaml stays; this invocation's goes beside it
            name, number = "config-resumed.yaml", 0
            while (folder / name).exists():
                number += 1
                name = f"config-resumed-{number}.yaml"
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}


def main(
    args: Optional[list[str]] = None, callbacks: Optional[dict[str, type[Callback]]] = None
) -> None:
    """``python main.py``: the CLI (``callbacks``: see :class:`VMoBACLI`), with a configuration
    that cannot run reported in one line (exit status 2) instead of a traceback."""
    try:
        VMoBACLI(args=args, callbacks=callbacks)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
