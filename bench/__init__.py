"""Benchmarks: the served endpoint against the model's in-process limit and a hand-written baseline."""
