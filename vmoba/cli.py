"""``python main.py fit|validate|test|predict`` on LightningCLI; ``configs/default.yaml`` by default."""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from data.datamodule import VideoDataModule
from vmoba.flow_matching import VMoBAFlowMatching

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

# Lets configs write ${trainer.default_root_dir} although each subcommand nests them (fit.trainer...).
set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


class VMoBACLI(LightningCLI):
    """LightningCLI with the default config, omegaconf interpolation (resolved after command-line
    overrides) and precision chosen by device when unset: bf16-mixed on GPU, fp32 on CPU."""

    def __init__(self, args=None, run: bool = True) -> None:
        defaults = {"default_config_files": [str(DEFAULT_CONFIG)], "parser_mode": "omegaconf+"}
        # With subcommands, each subcommand's parser reads the default config; without (run=False),
        # the main parser does.
        subcommands = ("fit", "validate", "test", "predict")
        parser_kwargs = {"parser_mode": "omegaconf+", **dict.fromkeys(subcommands, defaults)}
        super().__init__(
            VMoBAFlowMatching,
            VideoDataModule,
            parser_kwargs=parser_kwargs if run else defaults,
            save_config_kwargs={"overwrite": True},  # resuming a run rewrites its config
            args=args,
            run=run,
        )
        if run and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning destroys only NCCL groups at exit. A gloo group left to interpreter
            # shutdown can abort the process ("terminate called without an active exception",
            # pytorch/pytorch#190489), so every rank tears its groups down after a clean run.
            torch.distributed.destroy_process_group()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            gpu = (
                config.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
            )
            config.trainer.precision = "bf16-mixed" if gpu else "32-true"
