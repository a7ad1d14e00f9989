"""Run with one named adapter active, or with adapters disabled for the base model."""

from __future__ import annotations

from peft_apps.core.errors import UserError

from .options import BASE


class AdapterScope:
    """Run with one named adapter active, or with adapters disabled for the base model."""

    def __init__(self, engine, adapter: str | None):
        self.engine, self.adapter, self.ctx = engine, adapter, None

    def __enter__(self):
        e = self.engine
        name = self.adapter if self.adapter is not None else (e.adapters[0] if e.adapters else BASE)
        if name == BASE:
            if e.adapters:
                self.ctx = e.model.disable_adapter()
                self.ctx.__enter__()
        else:
            if name not in e.adapters:
                raise UserError(f"unknown adapter {name!r}; loaded: {', '.join(e.adapters) or '(none)'}")
            e.model.set_adapter(name)
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
