"""The exam metric module (loaded by path with `evaluate.load`)."""
