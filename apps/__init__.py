"""Task apps. Each subpackage registers itself with `peft_apps.core.register_app` when imported."""
