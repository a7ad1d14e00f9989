"""Registering a tuner with peft under a name peft's `PeftType` does not have.

peft's `register_peft_method` accepts only names already in its `PeftType` enum, so the member is added
first (the enum is a `str` enum: a member equals its name, which is what adapter_config.json stores).
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType


def peft_type(name: str) -> PeftType:
    """The `PeftType` member for `name` (e.g. "ssf" -> PeftType.SSF), added to the enum if missing."""
    key = name.upper()
    if key not in PeftType.__members__:
        member = str.__new__(PeftType, key)
        member._name_, member._value_ = key, key
        member.__objclass__ = PeftType
        PeftType._member_map_[key] = member
        PeftType._value2member_map_[key] = member
        PeftType._member_names_.append(key)
    return PeftType[key]


def register(name: str, config_cls, model_cls, prefix: str) -> None:
    """`peft.utils.register_peft_method` for a new name; importing twice registers once."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    member = peft_type(name)
    if PEFT_TYPE_TO_TUNER_MAPPING.get(member) is model_cls:
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
