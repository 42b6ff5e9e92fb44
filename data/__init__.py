"""Video data layer.

Modules (import from them directly, so that e.g. generating the synthetic set does not pull
in Lightning):

- ``data.synthetic``: ``ensure_synthetic_dataset`` builds the cached "moving shapes" set.
- ``data.video_dataset``: ``VideoClipDataset`` decodes clips listed in a manifest.
- ``data.datamodule``: ``VideoDataModule`` (LightningDataModule) and ``collate_videos``.
- ``data.latent_cache``: the latent cache's format and ``LatentCacheDataset``;
  ``python -m vmoba.preprocess`` writes caches (VAE posteriors and caption embeddings).
- ``data.manifest``, ``data.video_io``, ``data.transforms``, ``data.sampler``, ``data.fsutil``:
  manifest parsing, mp4 writing, resize/crop, epoch-seeded shuffling, atomic file output.
"""
