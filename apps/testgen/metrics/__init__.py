"""The testgen metric module (loaded by path with `evaluate.load`) and the vendored CodeBLEU."""
