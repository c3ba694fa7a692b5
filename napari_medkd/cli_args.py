"""Argument types for ``medkd``: every numeric option is range-checked when the command line is parsed
(``train --iterations -5`` is refused at once, not trained forever), with the rules of
:mod:`napari_medkd.config` (the same ranges a YAML configuration is checked against).

A module beside ``cli.py`` (the same layer) so the one parser module stays under the size limit.
"""
from __future__ import annotations

import argparse
from typing import Callable

from .config import NON_NEGATIVE, POSITIVE, Rule, range_problem


def number_type(rule: Rule, integer: bool, name: str) -> Callable[[str], float]:
    """An argparse ``type``: parses a number and refuses it outside ``rule`` with a clear message."""
    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if integer else ''}number, got '{text}'") from None
        problem = range_problem(value, rule, integer)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


positive_int = number_type(POSITIVE, True, "positive_int")
non_negative_int = number_type(NON_NEGATIVE, True, "non_negative_int")
positive_float = number_type(POSITIVE, False, "positive_float")
non_negative_float = number_type(NON_NEGATIVE, False, "non_negative_float")
opset = number_type((7.0, 30.0, False), True, "opset")
