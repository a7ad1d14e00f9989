"""The codereview metric module (loaded by path with `evaluate.load`)."""
