"""Tools of the calculator example agent (``calculator.yaml``): plain typed functions. Non-trusted tools run in the
sandbox, so this module imports nothing heavy (each call imports it again in a child Python)."""

from __future__ import annotations


def multiply(a: float, b: float) -> float:
    """Multiplies two numbers.

    Args:
        a: the first factor.
        b: the second factor.
    """
    return a * b


def add(a: float, b: float) -> float:
    """Adds two numbers.

    Args:
        a: the first term.
        b: the second term.
    """
    return a + b
