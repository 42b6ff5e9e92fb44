"""How many input shapes one compiled attention function may meet in a process.

``torch._dynamo`` compiles a function once per new input shape and, past its ``recompile_limit``
(8), runs it eagerly. Three video sizes already give nine layer shapes; eager selection is
several times slower, and eager FlexAttention materialises ``S x S`` scores."""

from __future__ import annotations

import torch

COMPILED_SHAPES = 64
"""Shapes (graphs) one compiled function may build per process: video sizes x layer kinds x
selection rules of a multi-resolution run or a server, with room to spare."""


def compiled_shapes(*, strict: bool):
    """A context raising dynamo's recompile limit to :data:`COMPILED_SHAPES`; ``strict``: a call
    past it raises instead of running eagerly (for FlexAttention, whose eager path materialises
    ``S x S`` scores)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    patch = {name: max(getattr(config, name), COMPILED_SHAPES)}
    if strict:
        for fail in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
            if hasattr(config, fail):
                patch[fail] = True
                break
    return config.patch(**patch)
