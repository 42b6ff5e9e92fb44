"""``UlyssesStrategy``: Lightning's DDP with sequence-parallel groups of consecutive ranks."""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed import ProcessGroup


@runtime_checkable
class SequenceParallelModule(Protocol):
    """A module that can hold ``S / N`` tokens of every video and attend across its group (such
    as :class:`vmoba.model.wan.VideoDiT`)."""

    def enable_sequence_parallel(self, group: ProcessGroup) -> None: ...


class UlyssesStrategy(DDPStrategy):
    """DDP whose ranks form groups of ``sequence_parallel`` that share every video they train on.

    With world size ``W = N x D`` (``N = sequence_parallel``), ranks ``[g N, (g + 1) N)`` form
    sequence-parallel group ``g``: they read the same batches (the DataLoaders' DistributedSampler
    splits the data over the ``D`` groups), draw the same noise, and each holds ``S/N`` tokens of
    every video (:mod:`vmoba.parallel.ulysses`). Consecutive ranks share a node, so keep ``N`` at
    most the GPUs per node. Gradients are averaged over all ``W`` ranks by plain DDP, which is the
    mean over the ``D`` replicas because every collective's backward is its exact adjoint.

    Every :class:`SequenceParallelModule` in the LightningModule (each ``VideoDiT``) is switched to
    sequence parallelism before DDP wraps it; ``N = 1`` is plain DDP.

    Args:
        sequence_parallel: ranks sharing each video, ``N >= 1``; it must divide the world size
            and the number of attention heads.
        kwargs: the arguments of Lightning's ``DDPStrategy`` (``process_group_backend``,
            ``timeout``, ``find_unused_parameters``, ...).
    """

    def __init__(self, sequence_parallel: int = 2, **kwargs: Any) -> None:
        is_int = isinstance(sequence_parallel, int) and not isinstance(sequence_parallel, bool)
        if not is_int or sequence_parallel < 1:
            raise ValueError(f"sequence_parallel must be an int >= 1, got {sequence_parallel!r}")
        super().__init__(**kwargs)
        self.sequence_parallel = sequence_parallel
        self.sequence_group: Optional[ProcessGroup] = None

    @property
    def data_parallel_size(self) -> int:
        """Number of sequence-parallel groups ``D`` (data-parallel replicas)."""
        return self.world_size // self.sequence_parallel

    @property
    def data_parallel_rank(self) -> int:
        """This rank's group index ``g``."""
        return self.global_rank // self.sequence_parallel

    def setup_distributed(self) -> None:
        super().setup_distributed()
        if self.world_size % self.sequence_parallel:
            raise ValueError(
                f"sequence_parallel ({self.sequence_parallel}) must divide the world size "
                f"({self.world_size})"
            )
        if self.sequence_parallel > 1:
            self.sequence_group, _ = dist.new_subgroups(self.sequence_parallel)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.data_parallel_size, "rank": self.data_parallel_rank}

    def setup(self, trainer: L.Trainer) -> None:
        dits = [m for m in self.lightning_module.modules() if isinstance(m, SequenceParallelModule)]
        if not dits:
            raise ValueError(
                "UlyssesStrategy needs a LightningModule with a VideoDiT (a module with "
                "enable_sequence_parallel)"
            )
        if self.sequence_group is not None:
            for dit in dits:
                dit.enable_sequence_parallel(self.sequence_group)
        super().setup(trainer)
