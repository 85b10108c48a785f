"""On / off settings as a user writes them: ``true`` / ``false`` (and yes / no, on / off, 1 / 0) to Python booleans.

A MONAI bundle override such as ``--stage0#enabled false`` or ``--network_config#finding_prompts false`` reaches the
code as the *string* ``'false'``, which Python takes as true; only ``False`` is parsed as a boolean. Every on / off
setting of the package goes through :func:`as_flag`, so both spellings mean what they say and anything else is a
typed error that names the setting.
"""

from __future__ import annotations

from typing import Any

from monai_r2gen.errors import ModelConfigError

__all__ = ["FLAG_WORDS", "as_flag"]

FLAG_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def as_flag(value: Any, name: str, modes: tuple[str, ...] = ()) -> Any:
    """``value`` as ``True`` / ``False``.

    Args:
        value: a bool, 0 / 1, or a word of :data:`FLAG_WORDS` (any case); ``None`` is passed through (unset).
        name: the setting, for the error message (e.g. ``"stage stage0: enabled"``).
        modes: further strings the setting accepts besides on / off (e.g. ``("lora", "full", "frozen")``), returned
            as they are.

    Raises:
        ModelConfigError: anything else.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in FLAG_WORDS:
            return FLAG_WORDS[word]
        if value in modes:
            return value
    elif isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    accepted = "true or false" + (f" or one of {list(modes)}" if modes else "")
    raise ModelConfigError(f"{name} must be {accepted}, got {value!r}")
