"""The conformance kit (``bench.testing``, design.md "Methods from outside the project") over every
registered method: the same checks a plugin's author runs with `bench check-method NAME`, on a
small random ViT and Swin (width 64), so a method registered later is covered at once."""
from __future__ import annotations

import pytest

import methods
from bench import testing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", methods.names())
def test_method_conforms(name):
    results = testing.check_method(name)
    failed = testing.failures(results)
    assert not failed, "\n".join(map(str, failed))
    method = methods.get(name)
    ran = {(r.check, r.backbone) for r in results}
    for family in testing.FAMILIES:  # every declared family gets every check, every other one the refusal
        if method.families is None or family in method.families:
            assert {(check, family) for check, _ in testing.CHECKS} <= ran
        else:
            assert (testing.REFUSES[0], family) in ran
    identity = [r for r in results if r.check == "identity"]
    assert all(r.status == ("pass" if getattr(method, "identity_at_init", False) else "n/a") for r in identity)
