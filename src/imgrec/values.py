"""What a number read from a config or a checkpoint must be, asked the same way by every layer.

YAML reads `true` as a bool, and Python counts a bool as an int: these checks say no to it.
"""

import math

from imgrec.errors import ImgrecError


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value, minimum: int = 0) -> bool:
    """An int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def as_list(value, key: str, example: str) -> list:
    """A config value that must be a list: [] for null, refused (naming the fix) for a lone string or number,
    which Python would otherwise read letter by letter (attacks=pgd as ['p', 'g', 'd'])."""
    if value is None:
        return []
    if isinstance(value, (str, int, float, bool)):
        raise ImgrecError(f"{key}={value!r} must be a list in brackets, e.g. {example}")
    return list(value)
