"""VMoBA attention: block partition, gates, selection, and exact backends (reference first)."""

from vmoba.attention.api import Selection, VMoBAConfig, vmoba_attention, vmoba_selection
from vmoba.attention.backends import Backend, backend_names, register_backend, resolve_backend
from vmoba.attention.flex import flex_block_mask, flex_tile_density
from vmoba.attention.gates import block_gates, block_mean_keys
from vmoba.attention.partition import LAYER_KINDS, BlockPartition, block_partition, layer_kind
from vmoba.attention.reference import reference_attention, reference_select_blocks
from vmoba.attention.selection import (
    HEAD_LOCAL_SCOPES,
    SCOPES,
    SELECTS,
    SelectionConfig,
    kept_density,
    select_blocks,
    self_block_mask,
    token_mask,
)
from vmoba.attention.tuning import DEFAULT_TUNING, Tuning

__all__ = [
    "DEFAULT_TUNING",
    "HEAD_LOCAL_SCOPES",
    "LAYER_KINDS",
    "SCOPES",
    "SELECTS",
    "Backend",
    "BlockPartition",
    "Selection",
    "SelectionConfig",
    "Tuning",
    "VMoBAConfig",
    "backend_names",
    "block_gates",
    "block_mean_keys",
    "block_partition",
    "flex_block_mask",
    "flex_tile_density",
    "kept_density",
    "layer_kind",
    "reference_attention",
    "reference_select_blocks",
    "register_backend",
    "resolve_backend",
    "select_blocks",
    "self_block_mask",
    "token_mask",
    "vmoba_attention",
    "vmoba_selection",
]
