"""A broken implementation must fail its check *with the message of its mistake*.

``tests/test_exercises.py`` proves that each function of ``tests/broken/`` fails its check; a
check that crashes would pass that test too, since checks turn crashes into ``AssertionError``.
Here every broken module that declares ``MESSAGES`` (function → pattern) must see each of its
functions fail with a message matching the pattern: the check names the mistake.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

import lal.checks
from make_exercises import ROOT


def _declared():
    params = []
    for module_path in sorted((ROOT / "tests" / "broken").glob("ch*.py")):
        spec = importlib.util.spec_from_file_location(f"broken_messages_{module_path.stem}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        messages = getattr(module, "MESSAGES", None)
        if messages is None:
            continue
        for check_name, implementations in module.BROKEN.items():
            for implementation in implementations:
                assert implementation in messages, f"{module_path.name}: no message for {implementation.__name__}"
                params.append(pytest.param(check_name, implementation, messages[implementation],
                                           id=f"{check_name}:{implementation.__name__}"))
    return params


@pytest.mark.parametrize("check_name, implementation, pattern", _declared())
def test_broken_implementation_fails_with_its_mistake_named(check_name, implementation, pattern) -> None:
    with pytest.raises(AssertionError, match=re.escape(pattern)):
        getattr(lal.checks, check_name)(implementation)
