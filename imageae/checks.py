"""Argument checks shared by the public functions of every job."""

import numpy as np


def check_int(name, value, *, minimum=None, maximum=None):
    """``value`` as an int, or a TypeError/ValueError naming ``name``, what was given and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        allowed = (f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}") if minimum is not None \
            else f"at most {maximum}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value
