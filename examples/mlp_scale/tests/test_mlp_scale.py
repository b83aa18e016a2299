"""The example method against peft-bench's conformance kit, as any plugin's own tests can run it."""
import pytest
import torch

import methods
from bench import testing


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_registered_through_its_entry_point():
    assert "mlp_scale" in methods.names()
    assert methods.plugins.provenance("mlp_scale") == "peft-bench-mlp-scale==0.1.0"


def test_conforms():
    results = testing.assert_conforms("mlp_scale")
    assert {r.backbone for r in results} == {"vit", "swin"}
    assert all(r.status == "pass" for r in results), results  # identity too: it is declared


def test_trains_one_scale_per_mlp_output_channel():
    model = methods.get("mlp_scale").apply(testing.small_backbone("vit"), num_classes=3)
    assert methods.count_trainable(model) == 2 * 64  # 2 blocks x width 64
