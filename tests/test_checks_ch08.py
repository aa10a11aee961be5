"""Chapter 8's checks name the mistake: each broken implementation fails with its own message."""

from __future__ import annotations

import importlib.util

import pytest

import lal.checks
from notebook_cells import ROOT

_spec = importlib.util.spec_from_file_location("broken_ch08_messages", ROOT / "tests" / "broken" / "ch08.py")
broken = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(broken)

CASES = [pytest.param(check_name, function, id=f"{check_name}:{function.__name__}")
         for check_name, functions in broken.BROKEN.items() for function in functions]


def test_every_broken_implementation_has_its_message() -> None:
    assert {function for _, function in (case.values for case in CASES)} == set(broken.MATCH)


@pytest.mark.parametrize("check_name, function", CASES)
def test_broken_implementation_fails_with_the_matching_message(check_name, function) -> None:
    with pytest.raises(AssertionError, match=broken.MATCH[function]):
        getattr(lal.checks, check_name)(function)
