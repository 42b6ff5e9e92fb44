"""vmoba: Video Mixture of Block Attention for video diffusion transformers."""
