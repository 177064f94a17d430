"""What the guards' ``checked()`` functions share beyond :mod:`adaptive_optax._src.validation`."""

from __future__ import annotations

from typing import Any


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Raises ``ValueError`` naming ``name`` and ``value`` unless one of ``choices``."""
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
