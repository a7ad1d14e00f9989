from .codebleu import AVAILABLE_LANGS, calc_codebleu

__all__ = ["calc_codebleu", "AVAILABLE_LANGS"]
