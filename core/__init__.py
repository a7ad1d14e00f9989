"""The shared training core: recipes, models, PEFT methods, data, training, inference, CLI.

Nothing here imports torch at module import time, so the CLI starts fast; the heavy modules
(`trainer`, `engine`, `modeling`, `merge`, `tiny`) import it themselves.
"""

from peft_apps.core.errors import UserError
from peft_apps.core.registry import App, get_app, list_apps, register_app

__all__ = ["App", "UserError", "get_app", "list_apps", "register_app"]
