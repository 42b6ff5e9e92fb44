"""The video DiT wiring: Wan 2.1 transformer with VMoBA self-attention."""

from vmoba.model.processor import VMoBAAttnProcessor, VMoBASettings
from vmoba.model.wan import TINY_WAN, VideoDiT, load_transformer

__all__ = ["TINY_WAN", "VMoBAAttnProcessor", "VMoBASettings", "VideoDiT", "load_transformer"]
