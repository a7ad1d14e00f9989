"""Helpers shared by the tests: synthetic data, adapters without training, the simulated accelerator."""
