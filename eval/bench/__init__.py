"""Benchmarks: speed and memory of the attention, a training step, sampling and several GPUs;
each writes its result files (named by the device) for ``python -m eval.performance``."""
