"""Train, validate, test or sample a VMoBA video DiT: ``python main.py fit [--config FILE]``."""

from eval.callbacks import TestVideoMetrics
from vmoba.cli import main

CALLBACKS = {"test_metrics": TestVideoMetrics}
"""The eval layer's callbacks, each configured under its key: ``python main.py test`` scores its
sampled videos (``--test_metrics.metrics [psnr, ssim]``, ``--test_metrics.weights '{clip: FILE}'``,
``--test_metrics.reference_dir DIR``)."""

if __name__ == "__main__":
    main(callbacks=CALLBACKS)
