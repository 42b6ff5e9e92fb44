"""The callbacks every ``python main.py`` command runs with (:class:`vmoba.cli.VMoBACLI` adds
them): the run summary ``metrics.json`` and the videos sampled after each validation."""

from vmoba.callbacks.run_summary import RunSummary
from vmoba.callbacks.samples import ValidationSamples, write_videos

__all__ = ["RunSummary", "ValidationSamples", "write_videos"]
