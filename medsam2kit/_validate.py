"""Small argument checks shared by the modules (one place, one wording of the errors)."""

from __future__ import annotations

import operator

from medsam2kit.errors import InvalidInputError, InvalidTypeError


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int (bools refused), at least ``minimum`` when given.

    Example:
        >>> check_int(3, "k", minimum=1)
        3
    """
    if isinstance(value, bool):
        raise InvalidTypeError(f"{name}: expected an integer, got bool {value}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidTypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}") from None
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name}: expected an integer >= {minimum}, got {number}")
    return int(number)
