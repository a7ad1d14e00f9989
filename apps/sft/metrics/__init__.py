"""The app's metrics as `evaluate` modules, loaded by path."""
