"""Training beyond one GPU: Ulysses sequence parallelism (``ulysses``) and the Lightning strategy
that sets it up beside data parallelism (``strategy.UlyssesStrategy``)."""
