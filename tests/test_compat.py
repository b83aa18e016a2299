"""The library internals we rely on (``bench.compat``), checked against the installed libraries:
when an upgrade renames or changes one, this file fails with the name of what changed, not a
sweep halfway through."""
from __future__ import annotations

import inspect

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from bench.compat import optuna_storage, timm_npz


@pytest.fixture
def storage(tmp_path):
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=30, grace_period=180)


@pytest.mark.parametrize("name, params", [
    ("get_study_id_from_name", ["study_name"]),
    ("get_trial_id_from_study_id_trial_number", ["study_id", "trial_number"]),
    ("set_trial_state_values", ["trial_id", "state", "values"]),
    ("set_trial_user_attr", ["trial_id", "key", "value"]),
    ("record_heartbeat", ["trial_id"]),
    ("get_heartbeat_interval", []),
])
def test_optuna_storage_methods_we_call_exist_with_these_parameters(name, params):
    method = getattr(optuna.storages.RDBStorage, name, None)
    assert method is not None, f"optuna.storages.RDBStorage.{name} is gone: update bench/compat/optuna_storage.py"
    assert list(inspect.signature(method).parameters)[1:1 + len(params)] == params, name


def test_claim_waiting_hands_a_waiting_trial_to_one_worker_only(storage):
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({}, user_attrs={"seed": 7})
    first = optuna_storage.claim_waiting(storage, study, 0, "host:1")
    assert isinstance(first, optuna.Trial) and first.number == 0
    assert first.user_attrs == {"seed": 7, "owner": "host:1"}
    assert study.trials[0].state == TrialState.RUNNING
    assert optuna_storage.claim_waiting(storage, study, 0, "host:2") is None  # the compare-and-set refuses
    assert study.trials[0].user_attrs["owner"] == "host:1"
    assert optuna_storage.fail_running(storage, study, 0) is True
    assert optuna_storage.fail_running(storage, study, 0) is False  # already finished
    assert study.trials[0].state == TrialState.FAIL


def test_heartbeats_are_recorded_where_the_storage_has_them(storage, tmp_path):
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    assert optuna_storage.heartbeat_interval(storage) == 30
    optuna_storage.record_heartbeat(storage, optuna_storage.trial_id(storage, study, trial.number))
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    assert optuna_storage.heartbeat_interval(journal) is None


def test_stale_trial_numbers_are_the_running_trials_whose_heartbeat_is_old(storage, tmp_path):
    """``RDBStorage._get_stale_trial_ids`` (`bench status`'s workers alive): an old heartbeat is stale,
    a fresh one or none (just claimed) is not, a finished trial never; a journal keeps no heartbeats."""
    import sqlite3

    assert list(inspect.signature(optuna.storages.RDBStorage._get_stale_trial_ids).parameters) == ["self", "study_id"]
    study = optuna.create_study(storage=storage, study_name="s")
    old, fresh, none, done = (study.ask() for _ in range(4))
    for trial in (old, fresh, done):
        optuna_storage.record_heartbeat(storage, optuna_storage.trial_id(storage, study, trial.number))
    study.tell(done, 1.0)
    con = sqlite3.connect(tmp_path / "o.db")
    con.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour') WHERE trial_id IN (?, ?)",
                (optuna_storage.trial_id(storage, study, old.number), optuna_storage.trial_id(storage, study, done.number)))
    con.commit()
    con.close()
    assert optuna_storage.stale_trial_numbers(storage, study) == {old.number}
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    assert optuna_storage.stale_trial_numbers(journal, optuna.create_study(storage=journal)) is None


def test_serialize_sqlite_takes_the_write_lock_at_begin(storage):
    optuna_storage.serialize_sqlite(storage)
    seen = []
    from sqlalchemy import event

    event.listen(storage.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    optuna.create_study(storage=storage, study_name="locked")
    assert "BEGIN IMMEDIATE" in seen


def test_timm_npz_reader_loads_an_original_layout_archive(tmp_path):
    """timm's private ``_load_weights`` still reads the original release's layout: a random
    ViT written as such an archive loads back to the same logits."""
    from timm.models.vision_transformer import VisionTransformer

    from bench.backbones import DEMO_CONFIG
    from bench.backbones.weights import vit_npz_arrays

    torch.manual_seed(0)
    source = VisionTransformer(num_classes=0, **DEMO_CONFIG).eval()
    arrays = vit_npz_arrays(source.state_dict(), source.blocks[0].attn.num_heads)
    np.savez(tmp_path / "vit.npz", **{k: v.detach().numpy() for k, v in arrays.items()})
    target = VisionTransformer(num_classes=0, **DEMO_CONFIG).eval()
    timm_npz.load_npz(target, tmp_path / "vit.npz")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=1e-5)
