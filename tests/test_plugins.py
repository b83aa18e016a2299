"""Methods from outside the project (issue 28): plugins from a file, a module, ``BENCH_PLUGINS`` or an
entry point; their provenance in the experiment identity; bad plugins refused with one line and
nothing written; the conformance kit failing a broken method on the check it breaks.

Every method a test registers is gone after it (``bench.testing.temporary_registry``)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import methods
from bench import testing
from bench.cli import main
from bench.identity import Experiment
from methods.families import FC2, layout_of
from methods.plugins import PluginError
from methods.surgery import Mergeable, merge_wrappers, wrap

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlp_scale" / "src" / "mlp_scale" / "method.py"


@pytest.fixture(autouse=True)
def registry():
    with testing.temporary_registry():
        yield


def plugin_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def example_as(folder: Path, name: str) -> Path:
    """The worked example (examples/mlp_scale) under another method name, so that it never clashes
    with an installed copy of the example."""
    text = EXAMPLE.read_text()
    assert 'name = "mlp_scale"' in text
    path = folder / f"{name}.py"
    path.write_text(text.replace('name = "mlp_scale"', f'name = "{name}"'))
    return path


# --------------------------------------------------------------------------- identity
def test_the_plugins_provenance_is_part_of_the_experiment():
    base = dict(suite="demo", backbone="demo", weights_sha256="a" * 64, method="mine", epochs=4)
    a, b, builtin = Experiment(**base, plugin="a"), Experiment(**base, plugin="b"), Experiment(**base)
    assert len({a.key(), b.key(), builtin.key()}) == 3
    assert Experiment.from_json(a.to_json()) == a
    old = json.loads(builtin.to_json())  # a record written before the field existed
    assert "plugin" not in old  # so a built-in experiment keeps the key it had
    assert Experiment.from_dict(old) == builtin and Experiment.from_dict(old).plugin == ""
    assert "plugin" not in builtin.params() and a.params()["plugin"] == "a"
    with pytest.raises(ValueError, match="not an experiment identity of this version"):
        Experiment.from_dict({**old, "colour": "red"})


# --------------------------------------------------------------------------- loading
def test_a_plugin_file_shows_in_bench_methods_and_runs(tmp_path, capsys):
    path = example_as(tmp_path, "plug_scale")
    assert main(["methods", "--backbone", "demo", "--plugin", str(path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| plug_scale ")]
    assert len(rows) == 1 and " 384 " in rows[0] and "init_std=0.0" in rows[0]  # 4 blocks x width 96
    assert methods.plugins.provenance("plug_scale") == "file:sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert methods.plugins.provenance("lora") is None
    assert str(path.resolve()) in os.environ["BENCH_PLUGINS"].split(os.pathsep)  # a run's workers load it too
    out = tmp_path / "run"
    assert main(["run", "--plugin", str(path), "--methods", "plug_scale", "--tasks", "digits", "--trials", "1",
                 "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-report", "--out", str(out)]) == 0
    assert "final plug_scale/digits seed 1: test acc" in capsys.readouterr().out


def test_loading_twice_is_loading_once_and_a_module_name_works(tmp_path, monkeypatch):
    path = example_as(tmp_path, "plug_twice")
    assert methods.plugins.load(str(path)) == ["plug_twice"]
    assert methods.plugins.load(str(tmp_path / ".." / tmp_path.name / "plug_twice.py")) == []  # the same file
    monkeypatch.syspath_prepend(str(tmp_path))
    example_as(tmp_path, "plug_module")
    assert methods.plugins.load("plug_module") == ["plug_module"]
    assert methods.plugins.provenance("plug_module").startswith("module:plug_module:sha256:")
    assert methods.plugins.source("plug_module") == "method 'plug_module' of plugin module plug_module"
    assert os.environ["BENCH_PLUGINS"].split(os.pathsep)[-2:] == [str(path.resolve()), "plug_module"]


# --------------------------------------------------------------------------- bad plugins
BAD = {
    "import": ("""
        import methods
        raise RuntimeError("boom at import")
        """, ["failed to import: RuntimeError: boom at import"]),
    "builtin-clash": ("""
        import methods

        @methods.register
        class Mine(methods.Method):
            name = "lora"
            def _adapt(self, model):
                pass
        """, ["method 'lora' of plugin", "clashes with built-in method 'lora' (methods.lora)"]),
    "no-name": ("""
        import methods

        @methods.register
        class Nameless(methods.Method):
            def _adapt(self, model):
                pass
        """, ["method class Nameless has no `name`"]),
    "no-adapt": ("""
        import methods

        @methods.register
        class Lazy(methods.Method):
            name = "lazy"
        """, ["method 'lazy' (Lazy) does not implement _adapt"]),
    "defaults-type": ("""
        import methods

        @methods.register
        class Listy(methods.Method):
            name = "listy"
            defaults = ["rank"]
            def _adapt(self, model):
                pass
        """, ["method 'listy': `defaults` must be a dict", "not list"]),
    "defaults-fail-checks": ("""
        import methods

        @methods.register
        class Picky(methods.Method):
            name = "picky"
            defaults = {"rank": 0}
            def _check(self, hp):
                if hp["rank"] < 1:
                    raise ValueError("picky: rank must be >= 1")
            def _adapt(self, model, rank):
                pass
        """, ["method 'picky': its defaults fail its own checks", "rank must be >= 1"]),
    "registers-nothing": ("""
        X = 1
        """, ["registers no method"]),
}


def _bad_run(capsys, out: Path, *plugins: Path) -> str:
    flags = [f for p in plugins for f in ("--plugin", str(p))]
    code = main(["run", *flags, "--methods", "lora", "--tasks", "digits", "--trials", "1", "--epochs", "1",
                 "--seeds", "1", "--jobs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "a bad plugin wrote something"
    return err


@pytest.mark.parametrize("case", BAD)
def test_a_bad_plugin_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    body, expected = BAD[case]
    path = plugin_file(tmp_path, f"bad_{case.replace('-', '_')}", body)
    before = methods.names()
    err = _bad_run(capsys, tmp_path / "out", path)
    assert err.startswith("error: ") and str(path) in err, err
    assert all(part in err for part in expected), err
    assert methods.names() == before  # nothing of it stays registered, nor imported
    assert not any(m.startswith(f"bench_plugin_{path.stem}_") for m in sys.modules)


def test_two_plugins_with_one_name_are_refused_naming_both(tmp_path, capsys):
    body = """
        import methods

        @methods.register
        class Dup(methods.Method):
            name = "dup_method"
            def _adapt(self, model):
                pass
        """
    a, b = plugin_file(tmp_path, "first", body), plugin_file(tmp_path, "second", body)
    err = _bad_run(capsys, tmp_path / "out", a, b)
    assert f"method 'dup_method' of plugin {b} clashes with method 'dup_method' of plugin {a}" in err, err


def test_a_missing_plugin_file_or_module_is_one_line(tmp_path, capsys):
    assert "no such file" in _bad_run(capsys, tmp_path / "out", tmp_path / "missing.py")
    assert "ModuleNotFoundError" in _bad_run(capsys, tmp_path / "out", Path("no_such_plugin_module_xyz"))


def test_register_names_both_sources_of_a_clash():
    class Again(methods.Method):
        name = "lora"

        def _adapt(self, model):
            pass

    with pytest.raises(PluginError, match=r"method 'lora' \(test_plugins\..*Again\) clashes with built-in "
                                          r"method 'lora' \(methods\.lora\)"):
        methods.register(Again)


def _fake_distribution(folder: Path, entry_point: str) -> None:
    """An installed distribution (its dist-info on the path) with one entry point of the group."""
    info = folder / "ghost_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ghost-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[peft_bench.methods]\nghost = {entry_point}\n")


@pytest.mark.parametrize("how", ["entry-point", "env"])
def test_a_bad_installed_plugin_stops_every_command_with_one_line(tmp_path, how):
    """An entry point to a missing module (or a BENCH_PLUGINS file that fails), found when the
    registry is first imported: `bench run` prints one line, exits 2 and writes nothing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BENCH_PLUGINS", None)
    if how == "entry-point":
        _fake_distribution(tmp_path / "site", "no_such_module_xyz")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
        expected = ["plugin entry point ghost = no_such_module_xyz (distribution ghost-plugin 0.1) failed to import: "
                    "ModuleNotFoundError: No module named 'no_such_module_xyz'"]
    else:
        env["BENCH_PLUGINS"] = str(plugin_file(tmp_path, "bad_env", BAD["import"][0]))
        expected = [env["BENCH_PLUGINS"], "failed to import: RuntimeError: boom at import"]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--methods", "lora", "--tasks", "digits",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(part in lines[0] for part in expected), proc.stderr[-2000:]
    assert not out.exists()


# --------------------------------------------------------------------------- the kit against broken methods
class _Scaled(Mergeable):
    def __init__(self, base: nn.Linear, std: float = 0.0):
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(1 + std * torch.randn(base.out_features))

    def forward(self, x):
        return self.base(x) * self.scale

    @torch.no_grad()
    def merged(self):
        self.base.weight.mul_(self.scale[:, None])
        self.base.bias.mul_(self.scale)
        return self.base


class _WrongMerge(_Scaled):
    @torch.no_grad()
    def merged(self):
        self.base.weight.mul_(self.scale[:, None])  # forgets the bias
        return self.base


class _Good(methods.Method):
    name = "_kit_good"
    identity_at_init = True
    wrapper = _Scaled

    def _adapt(self, model):
        wrap(model, layout_of(model).paths(FC2), lambda _, fc2: self.wrapper(fc2))

    def _merge(self, model):
        merge_wrappers(model)


class _TrainsBackbone(_Good):
    name = "_kit_trains_backbone"

    def _adapt(self, model):
        super()._adapt(model)
        model.get_parameter(f"{layout_of(model).blocks[0]}.mlp.fc1.weight").requires_grad_(True)


class _MergesWrongly(_Good):
    name = "_kit_merges_wrongly"
    wrapper = _WrongMerge


class _NotIdentity(_Good):
    name = "_kit_not_identity"
    wrapper = staticmethod(lambda fc2: _Scaled(fc2, std=0.5))


class _RunsEverywhere(_Good):
    name = "_kit_claims_vit_only"
    families = ("vit",)

    def check_family(self, model):  # forgets to refuse what it does not declare
        pass


@pytest.mark.parametrize("cls,check,message", [
    (_Good, None, ""),
    (_TrainsBackbone, "trainable", "blocks.0.mlp.fc1.weight' (as "),  # vit's blocks.0, swin's layers.0.blocks.0
    (_MergesWrongly, "merge", "the merged model's logits differ by"),
    (_NotIdentity, "identity", "identity_at_init = True, but the logits at init differ"),
    (_RunsEverywhere, "unsupported", "builds on swin although its families are ('vit',)"),
], ids=["good", "trains-backbone", "merges-wrongly", "not-identity", "no-refusal"])
def test_the_kit_fails_a_broken_method_on_the_check_it_breaks(cls, check, message):
    methods.register(cls)
    failed = testing.failures(testing.check_method(cls.name))
    assert {r.check for r in failed} == ({check} if check else set()), failed
    assert all(message in r.detail for r in failed), failed
    if check == "trainable":
        assert all(r.detail.startswith("trains backbone tensor ") for r in failed), failed
    if check:
        with pytest.raises(AssertionError, match=check):
            testing.assert_conforms(cls.name)


def test_bench_check_method_prints_the_table_and_fails_on_a_failed_check(tmp_path, capsys):
    good = example_as(tmp_path, "plug_checked")
    assert main(["check-method", "plug_checked", "--plugin", str(good)]) == 0
    out = capsys.readouterr().out
    assert "plug_checked (plugin file:sha256:" in out and "all 14 checks passed" in out
    assert out.count("| pass ") == 14
    broken = plugin_file(tmp_path, "broken", """
        import methods
        from methods.families import layout_of

        @methods.register
        class Broken(methods.Method):
            name = "plug_broken"
            mergeable = False
            def _adapt(self, model):
                layout = layout_of(model)
                model.get_parameter(layout.blocks[0] + ".mlp.fc1.weight").requires_grad_(True)
        """)
    assert main(["check-method", "plug_broken", "--plugin", str(broken)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\| trainable +\| vit +\| FAIL +\| trains backbone tensor 'blocks.0.mlp.fc1.weight'", out), out
    assert "2 of 14 checks failed: trainable" in out, out
    assert main(["check-method", "no_such_method"]) == 2
    assert "unknown method 'no_such_method'" in capsys.readouterr().err
