"""The Hugging Face peft bridge (methods/peft_tuners.py, methods/peft_compat.py) and our LoRA's forward.

Registry-wide properties (counts, what trains, weight decay, merge on the demo architecture) are
in test_methods.py through specs_peft.py; every family is in test_families.py. Here: what is
particular to the bridge: every peft type is registered or refused with a reason; the peft API and
internals we rely on (peft_compat) still behave as we use them; meta counts equal real ones;
identity at init as each row states it; seeded reproducibility (VeRA's shared projections and
FourierFT's locations included); the tuners with a mechanism of their own (OSF's gradient
projection, Lily's shared B's, PVeRA's sampling, BOFT without its JIT kernel); AdaLoRA trained
through the fit's per-step hooks against peft's own documented loop (equal tensors, the same rank
budget), its regulariser and merge; that a further peft tuner is one table row; merge back to the
plain timm model; a clear line when peft is missing or of another version, no network, lazy import.
"""
from __future__ import annotations

import copy
import inspect
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import methods
import specs_peft
from bench.backbones import create_meta
from conftest import perturb_trainable, plain_fit
from methods import peft_compat, peft_tuners
from methods.base import _REGISTRY, register
from methods.families import ATTN_PROJ, FC1, layout_of

pytestmark = pytest.mark.usefixtures("one_thread")

TUNERS = [row.name for row in peft_tuners.TUNERS]
ROWS = {row.name: row for row in peft_tuners.TUNERS}
MERGEABLE = [name for name in TUNERS if ROWS[name].mergeable]
# tuners whose every tensor (trainable or not, state_dict or peft's plain dicts) is a constant or a
# function of the backbone's weights: the seed changes nothing (their init is in specs_peft.NO_RANDOM_INIT
# too); every other tuner draws something from the seed
DETERMINISTIC = {"ia3", "oft", "boft", "psoft", "road", "miss", "beft", "pissa", "olora", "osf", "ln_tuning",
                 "supertuning"}


@pytest.fixture(scope="module")
def peft():
    return peft_compat.import_peft("the tests")


@pytest.fixture(scope="module")
def vit(small_vit):
    return small_vit


@pytest.fixture(scope="module")
def x(images):
    return images


def applied(name, base, seed, **hp):
    torch.manual_seed(seed)
    return methods.get(name).apply(base, num_classes=10, **hp)


def bare_config(peft, row):
    """The row's peft config class with its fixed fields only (AdaLoRA's needs a total_step)."""
    return peft_compat.config_class(peft, row.config)(**row.fixed)


def state(model):
    """Every tensor of the model (buffers too, persistent or not) and the tensors peft keeps in plain
    dicts on its layers (FourierFT's, WaveFT's and SHiRA's locations)."""
    out = {k: v.clone() for k, v in model.state_dict().items()}
    out.update({f"{k}#buffer": v.clone() for k, v in model.named_buffers()})
    for name, m in peft_compat.tuner_layers(model):
        for attr, value in vars(m).items():
            if isinstance(value, dict) and not attr.startswith("_"):
                out.update({f"{name}.{attr}.{k}": v.clone() for k, v in value.items() if isinstance(v, torch.Tensor)})
    return out


# -- every peft type: registered or refused, and why -----------------------------------------

def test_every_peft_type_is_registered_or_refused_with_a_reason(peft):
    """A peft release with a tuner type the tables do not name fails here until a row says what to do."""
    catalog = peft_tuners.catalog(peft)
    types = peft_compat.peft_types(peft)
    assert list(catalog) == types and len(types) >= 40
    missing = [t for t, what in catalog.items() if not what.startswith(("registered as ", "refused: "))]
    assert not missing, f"peft types in neither table of methods/peft_tuners.py: {missing}"
    stale = sorted(({row.peft_type for row in peft_tuners.TUNERS} | set(peft_tuners.REFUSED)) - set(types))
    assert not stale, f"table rows for types this peft does not have: {stale}"
    assert not set(peft_tuners.REFUSED) & {row.peft_type for row in peft_tuners.TUNERS}
    for why in peft_tuners.REFUSED.values():
        assert why.strip() and "\n" not in why
    # the brief's list: each of these is a registered method (GLoRA exists in peft 0.21)
    for name in ("glora", "oft", "boft", "hra", "vblora", "randlora", "c3a", "delora", "road", "shira", "waveft",
                 "ln_tuning", "pissa", "olora", "rslora"):
        assert name in methods.names() and methods.get(name).group == "peft"
    assert catalog["ADALORA"] == "registered as adalora"  # trained through Method's per-step hooks


@pytest.mark.parametrize("peft_type", sorted(peft_tuners.REFUSED))
def test_a_refused_type_is_one_line_naming_why(peft_type):
    with pytest.raises(methods.Unsupported) as err:
        peft_tuners.methods_for(peft_type)
    message = str(err.value)
    assert "\n" not in message and message == f"peft {peft_type} is not a method here: {peft_tuners.REFUSED[peft_type]}"


def test_methods_for_a_registered_and_an_unknown_type():
    assert peft_tuners.methods_for("LORA") == ["dora", "pissa", "olora", "rslora"]
    assert peft_tuners.methods_for("OFT") == ["oft"]
    with pytest.raises(ValueError, match="in neither table"):
        peft_tuners.methods_for("NOT_A_TYPE")


@pytest.mark.parametrize("name", TUNERS)
def test_each_row_names_peft_s_own_type_config_and_hyperparameters(peft, name):
    row = ROWS[name]
    cls = peft_compat.config_class(peft, row.config)
    assert bare_config(peft, row).peft_type.name == row.peft_type
    fields = set(inspect.signature(cls).parameters)
    passed = {spec.peft or key for key, spec in row.hparams.items() if spec.peft is not None} | set(row.fixed) | set(row.seeds)
    assert passed <= fields, passed - fields
    method = methods.get(name)
    assert row.paper and row.what and row.source and method.group == "peft"
    assert type(method).__doc__.startswith(row.what) and method.paper == row.paper
    assert method.code == f"huggingface/peft 0.21 ({peft_compat.tuner_class(peft, bare_config(peft, row)).__name__})"


# -- what we rely on in peft (peft_compat): it fails here, loudly, when peft changes it --------

def test_the_public_peft_api_we_use(peft):
    assert [p for p in inspect.signature(peft.inject_adapter_in_model).parameters][:3] == [
        "peft_config", "model", "adapter_name"]
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert "safe_merge" in inspect.signature(BaseTunerLayer.merge).parameters
    assert callable(BaseTunerLayer.get_base_layer)
    for row in peft_tuners.TUNERS:
        config = bare_config(peft, row)
        assert issubclass(peft_compat.tuner_class(peft, config), peft.tuners.tuners_utils.BaseTuner)
        assert isinstance(peft_compat.tuner_class(peft, config).uses_shared_state, bool)


def test_shared_state_tuners_need_the_tuner_class(peft, vit):
    """``inject_adapter_in_model`` refuses tuners with shared state (hence peft_compat's fallback); the
    others go through it."""
    shared = sorted(row.name for row in peft_tuners.TUNERS
                    if peft_compat.tuner_class(peft, bare_config(peft, row)).uses_shared_state)
    assert shared == ["pvera", "tinylora", "unilora", "vblora", "vera"]
    config = peft.VeraConfig(target_modules=["blocks.0.attn.qkv"])
    with pytest.raises(ValueError, match="shared state"):
        peft.inject_adapter_in_model(config, copy.deepcopy(vit))
    model = copy.deepcopy(vit)
    assert peft_compat.inject(peft, model, config) == ["blocks.0.attn.qkv"]
    assert hasattr(model, "peft_config")  # what forget_config removes
    peft_compat.forget_config(model)
    assert not hasattr(model, "peft_config")


def test_peft_full_matches_a_string_target_but_suffix_matches_a_list(peft, vit):
    """Why the bridge passes one regex: a list entry also matches name suffixes (``norm`` would take
    every block's ``attn.norm``, an Identity)."""
    as_list = copy.deepcopy(vit)
    with pytest.raises(Exception):  # peft tries to wrap blocks.*.attn.norm, which has no parameters
        peft_compat.inject(peft, as_list, peft.LNTuningConfig(target_modules=["norm"]))
    as_regex = copy.deepcopy(vit)
    assert peft_compat.inject(peft, as_regex, peft.LNTuningConfig(target_modules="norm")) == ["norm"]


def test_boft_never_compiles_its_kernel_and_keeps_butterfly_factor_one(vit, x):
    """peft JIT-compiles BOFT's CUDA kernel on first use and, without it, silently sets the butterfly
    factor to 1: peft_compat tells peft the kernel is absent (no compiler runs) and our BOFT uses 1."""
    import peft.tuners.boft.layer as boft_layer

    assert callable(boft_layer.get_fbd_cuda) and hasattr(boft_layer, "_FBD_CUDA")
    model = applied("boft", vit, 0)
    assert boft_layer._FBD_CUDA is False and boft_layer.get_fbd_cuda() is False
    layers = [m for _, m in peft_compat.tuner_layers(model)]
    assert layers and all(not m.fbd_cuda_available for m in layers)
    assert all(m.boft_R["default"].shape[0] == 1 for m in layers)  # one butterfly factor
    assert ROWS["boft"].fixed["boft_n_butterfly_factor"] == 1


def test_merge_and_unload_uses_peft_s_layer_merge(vit, x, monkeypatch):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = applied("dora", vit, 0).eval()
    perturb_trainable(model)
    cls = type(model.blocks[0].attn.qkv)
    real, calls = cls.merge, []
    monkeypatch.setattr(cls, "merge", lambda self, *a, **k: (calls.append(k), real(self, *a, **k))[1])
    with torch.no_grad():
        peft_compat.merge_and_unload(model)
    assert calls == [{"safe_merge": True}] * len(model.blocks)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()) and not hasattr(model, "peft_config")


# -- meta counts, identity at init, seeds --------------------------------------------------------

@pytest.fixture(scope="module")
def meta_vit_b():
    return create_meta("vit_base_patch16_224")


@pytest.mark.parametrize("name", TUNERS)
def test_count_on_the_meta_device_is_the_real_count(meta_vit_b, name):
    """`bench methods` counts on the meta device; tuners that read weight values there take their
    ``meta`` settings (PiSSA/OLoRA: plain init, SHiRA: no locations): the count is the real one
    (specs_peft.VIT_B_COUNTS, measured on a real random ViT-B/16)."""
    expected = {n: c for n, hp, c in specs_peft.VIT_B_COUNTS if not hp}[name]
    assert methods.count_trainable(methods.get(name).apply(meta_vit_b, num_classes=100)) == expected


@pytest.mark.parametrize("name", TUNERS)
def test_identity_at_init_is_as_the_row_states(vit, x, name):
    model = applied(name, vit, 0).eval()
    ref = copy.deepcopy(vit)
    ref.reset_classifier(10)
    ref.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        diff = (model(x) - ref.eval()(x)).abs().max().item()
    assert methods.get(name).identity_at_init == ROWS[name].identity
    if ROWS[name].identity:
        assert diff <= 1e-5, diff
    else:  # VB-LoRA, C3A, Uni-LoRA, FourierFT: a random non-zero update at init
        assert diff > 1e-5, diff


@pytest.mark.parametrize("name", TUNERS)
def test_the_same_seed_gives_the_same_tensors(vit, name):
    a, b, c = state(applied(name, vit, 7)), state(applied(name, vit, 7)), state(applied(name, vit, 8))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    adapter = [k for k in a if not k.startswith("head.") and k not in vit.state_dict() and ".base_layer." not in k]
    assert adapter, "no adapter tensors"
    random = [k for k in adapter if not torch.equal(a[k], c[k])]
    if name in DETERMINISTIC:
        assert not random, random
    else:  # projections, bases, locations, factors: drawn from the seed
        assert random, f"{name}: nothing depends on the seed"
    if name in ("fourierft", "waveft", "shira"):  # their locations (peft keeps them in plain dicts)
        assert any("indices" in k for k in random)


def test_vera_projections_are_shared_seeded_saved_and_merged(vit, x):
    """One pair of projections for every layer (sliced to each shape), drawn from the seed, in the
    state_dict (peft's save_projection=True), so loading a state_dict restores the model exactly."""
    model = applied("vera", vit, 3)
    layers = [b.attn.qkv for b in model.blocks]
    a = {id(layer.vera_A["default"]) for layer in layers}
    assert len(a) == 1 and layers[0].vera_A["default"].shape == (256, 96)
    assert layers[0].vera_B["default"].shape == (288, 256)
    keys = model.state_dict()
    assert all(f"blocks.{i}.attn.qkv.vera_A.default" in keys for i in range(len(layers)))
    perturb_trainable(model)
    other = applied("vera", vit, 4)  # other projections ...
    assert not torch.equal(other.blocks[0].attn.qkv.vera_A["default"], layers[0].vera_A["default"])
    other.load_state_dict(model.state_dict())  # ... until the state_dict brings the saved ones
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
        merged = methods.get("vera").merge(model).eval()
        assert (merged(x) - model(x)).abs().max().item() <= 1e-5
    assert "vera_A" not in str(list(merged.state_dict()))


# -- tuners with a mechanism of their own ----------------------------------------------------

def test_osf_projects_the_gradients_off_the_frozen_subspace(vit, x):
    """OSF's gradient hooks survive apply: U_low's and V_low's gradients are orthogonal to the
    frozen top singular directions (the fused qkv is 288 x 96: U is not square, so peft keeps
    U_high and projects with it; V is square)."""
    model = applied("osf", vit, 0).train()
    F.cross_entropy(model(x), torch.arange(len(x))).backward()
    layer = model.blocks[0].attn.qkv
    params = layer.osf_svd_params["default"]
    u_high = layer._osf_U_high["default"]  # 288 x 48
    v_init = layer._osf_V_low_init["default"]  # 48 x 96
    assert params["U_low"].grad.abs().sum() > 0 and params["V_low"].grad.abs().sum() > 0
    torch.testing.assert_close(u_high.T @ params["U_low"].grad, torch.zeros(48, 48), atol=1e-6, rtol=0)
    g = params["V_low"].grad  # in the span of V_low's initial rows, so orthogonal to V_high's
    torch.testing.assert_close(g @ v_init.T @ v_init, g, atol=1e-6, rtol=0)


def test_lily_shares_its_b_s_across_all_blocks_and_a_within_a_stride(vit):
    """Lily shares the B's among the layers one target entry matched: the bridge's one regex makes
    that every block (with a list of exact paths each layer would keep its own)."""
    model = applied("lily", vit, 0)
    layers = [b.attn.qkv for b in model.blocks]
    assert len({id(m.lily_B["default"]) for m in layers}) == 1
    assert len({id(m.lily_A["default"]) for m in layers}) == 4
    strided = applied("lily", vit, 0, stride_A=2)
    assert [id(b.attn.qkv.lily_A["default"]) for b in strided.blocks][::2] == \
        [id(b.attn.qkv.lily_A["default"]) for b in strided.blocks][1::2]
    with pytest.raises(methods.NotMergeable):
        methods.get("lily").merge(model)


def test_pvera_samples_in_training_and_merges_its_mean(vit, x):
    model = applied("pvera", vit, 0)
    perturb_trainable(model)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))  # a sample per forward
        model.eval()
        mean = model(x)
        assert torch.equal(model(x), mean)
        merged = methods.get("pvera").merge(model).eval()
        assert (merged(x) - mean).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name, key, peft_key, expected", [
    ("road", None, "group_size", 32),          # 64 does not divide the demo's 288 outputs
    ("vblora", None, "vector_length", 32),     # 256 does not divide 96 or 288
    ("c3a", "block_size", "block_size", 32),   # 256 does not divide 96
])
def test_sizes_peft_needs_to_divide_the_layers_follow_the_backbone(vit, peft, name, key, peft_key, expected):
    method = methods.get(name)
    layout = layout_of(vit)
    config = method.peft_config(peft, method.targets_of(layout), layout, vit, **method.defaults)
    assert getattr(config, peft_key) == expected


# -- merge ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MERGEABLE)
def test_merge_is_peft_merge_into_the_plain_model(vit, x, name):
    model = applied(name, vit, 0).eval()
    perturb_trainable(model)
    before = state(model)
    merged = methods.get(name).merge(model).eval()
    plain = copy.deepcopy(vit)
    plain.reset_classifier(10)
    assert type(merged) is VisionTransformer and list(merged.state_dict()) == list(plain.state_dict())
    assert not hasattr(merged, "peft_config") and hasattr(model, "peft_config")
    assert not any(peft_tuners.is_tuner_layer(m) for m in merged.modules())
    with torch.no_grad():
        diff = (merged(x) - model(x)).abs().max().item()
    assert diff <= 1e-4, diff
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "merge changed its input"
    # only the adapted modules changed, by peft's own delta
    changed = {k for k, v in merged.state_dict().items() if not k.startswith("head.")
               and not torch.equal(v, plain.state_dict()[k])}
    paths = methods.get(name).targets_of(layout_of(vit)).all
    assert changed and changed <= {f"{p}.{t}" for p in paths for t in ("weight", "bias")}, changed


def test_ia3_scales_qkv_outputs_and_fc2_inputs(vit):
    model = applied("ia3", vit, 0)
    perturb_trainable(model)
    block, plain = model.blocks[0], vit.blocks[0]
    h = torch.randn(2, 5, 96)
    lq = block.attn.qkv.ia3_l["default"].flatten()
    lf = block.mlp.fc2.ia3_l["default"].flatten()
    with torch.no_grad():
        torch.testing.assert_close(block.attn.qkv(h), plain.attn.qkv(h) * lq)
        u = torch.randn(2, 5, 384)
        torch.testing.assert_close(block.mlp.fc2(u), plain.mlp.fc2(u * lf))


@pytest.mark.parametrize("name", ["ia3", "vera", "fourierft", "beft"])
def test_the_stated_deviation_the_fused_qkv_changes_q_k_and_v(vit, name):
    """The deviation methods/peft_tuners.py states: on timm's fused qkv these tuners change the rows
    of q, k and v alike, where the papers adapt q and v (IA3: k and v; BEFT: v); one vector or
    spectrum covers all 3 x width rows (on ViT-B/16: 64,512 / 30,720 / 12,000 / 27,648 trainable
    against the papers' 55,296 / 24,576 / 24,000 / 9,216)."""
    model = applied(name, vit, 0)
    perturb_trainable(model)  # VeRA's b and BEFT's bias start at zero, IA3's scales at one: move them
    layer, plain = model.blocks[0].attn.qkv, vit.blocks[0].attn.qkv
    trainable = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    width = 96
    assert {n: p.numel() for n, p in trainable.items()} == {
        "ia3": {"ia3_l.default": 3 * width},
        "vera": {"vera_lambda_b.default": 3 * width, "vera_lambda_d.default": 256},
        "fourierft": {"fourierft_spectrum.default": 1000},
        "beft": {"beft_bias.default": 3 * width},
    }[name]
    if name == "fourierft":  # the 1000 locations fall in the rows of all three projections
        rows = layer.indices["default"][0]
        assert {int(r) // width for r in rows} == {0, 1, 2}
    h = torch.randn(2, 5, width)
    with torch.no_grad():
        change = (layer(h) - plain(h)).abs().reshape(-1, 3, width).amax(dim=(0, 2))  # q, k, v
    assert bool((change > 1e-4).all()), change


# -- the bridge: a further peft tuner is one table row ---------------------------------------

def test_a_further_peft_tuner_is_one_row(vit, x):
    """Throwaway: peft LoRA on attn.proj and mlp.fc1, a row registered only inside this test."""
    row = peft_tuners.Tuner(
        "_test_peft_lora_proj_fc1", "LORA", "LoraConfig", "Hu et al., LoRA, ICLR 2022", "peft LoRA on attn.proj and mlp.fc1",
        "a test",
        {"rank": peft_tuners.Hp(4, "rank", width=True, space=(2, 4), peft="r"),
         "alpha": peft_tuners.Hp(4, "alpha", kind="float", lo=0, lo_open=True, peft="lora_alpha")},
        derived={"alpha": lambda hp: hp["rank"]}, targets=(ATTN_PROJ, FC1))
    register(peft_tuners.make(row))
    try:
        method = methods.get(row.name)
        assert method.search_space(__import__("optuna").trial.FixedTrial({"rank": 2})) == {"rank": 2, "alpha": 2}
        with pytest.raises(ValueError, match="rank must be an integer in \\[1, 96\\]"):
            method.apply(vit, num_classes=10, rank=97)
        model = applied(row.name, vit, 0)
        wrapped = sorted(n for n, m in model.named_modules() if peft_tuners.is_tuner_layer(m))
        assert wrapped == sorted(f"blocks.{i}.{t}" for i in range(4) for t in (ATTN_PROJ, FC1))
        assert methods.count_trainable(model) == 4 * (4 * (96 + 96) + 4 * (96 + 384))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), torch.arange(4)).backward()
            opt.step()
        model.eval()
        merged = method.merge(model).eval()
        with torch.no_grad():
            assert (merged(x) - model(x)).abs().max().item() <= 1e-5
        assert type(merged) is VisionTransformer and not any(peft_tuners.is_tuner_layer(m) for m in merged.modules())
    finally:
        _REGISTRY.pop(row.name, None)
    assert row.name not in methods.names()


def test_peft_is_given_exact_paths_not_suffixes(vit):
    """A module whose path ends like a target (``...extra.attn.qkv``, ``...attn.norm``) is not adapted."""
    model = copy.deepcopy(vit)
    model.extra = torch.nn.Module()
    model.extra.attn = torch.nn.Module()
    model.extra.attn.qkv = torch.nn.Linear(96, 288)
    model.extra.norm = torch.nn.LayerNorm(96)
    adapted = applied("dora", model, 0)
    assert type(adapted.extra.attn.qkv) is torch.nn.Linear
    assert peft_tuners.is_tuner_layer(adapted.blocks[0].attn.qkv)
    ln = applied("ln_tuning", model, 0)
    assert type(ln.extra.norm) is torch.nn.LayerNorm and peft_tuners.is_tuner_layer(ln.norm)


def test_peft_lora_reference_matches_our_lora_in_size(vit):
    """bench perf times our lora against peft's LoRA on the whole qkv: the same parameter count."""
    ours = applied("lora", vit, 0)
    theirs = peft_tuners.PeftLoRA().apply(vit, num_classes=10)
    assert methods.count_trainable(ours) == methods.count_trainable(theirs) == 4 * 2 * 8 * (96 + 96)


# -- peft missing or of another version; no network; lazy import -----------------------------

@pytest.mark.parametrize("found, needle", [(None, "not installed"), ("0.17.1", "found peft 0.17.1"),
                                           ("0.22.0", "found peft 0.22.0")])
def test_peft_missing_or_another_version_is_one_line(vit, monkeypatch, found, needle):
    import importlib.metadata as md

    def version(pkg):
        if pkg != "peft":
            return md.version(pkg)
        if found is None:
            raise md.PackageNotFoundError(pkg)
        return found

    monkeypatch.setattr(md, "version", version)
    for name in ("dora", "oft"):
        with pytest.raises(ImportError) as err:
            methods.get(name).apply(vit, num_classes=10)
        message = str(err.value)
        assert isinstance(err.value, peft_tuners.PeftUnavailable)
        assert "\n" not in message and needle in message and "peft>=0.21,<0.22" in message


def test_apply_and_merge_open_no_network_connection(vit, monkeypatch):
    real = socket.socket.connect

    def connect(self, address):
        if self.family != socket.AF_UNIX:
            raise AssertionError(f"network connection to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError(a)))
    for name in TUNERS:
        model = applied(name, vit, 0)
        if ROWS[name].mergeable:
            methods.get(name).merge(model)


def test_import_methods_does_not_import_peft():
    code = "import sys, methods; assert 'dora' in methods.names(); print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- our LoRA's forward ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5), (7,)])
def test_lora_forward_and_gradients_equal_the_formula(vit, shape):
    """q and v rows get (alpha/r) x A^T B^T added, k rows stay the frozen Linear's; gradients of
    x, A and B are those of the formula."""
    from methods.lora import LoRALinear

    torch.manual_seed(0)
    lin = copy.deepcopy(vit.blocks[0].attn.qkv).requires_grad_(False)
    layer = LoRALinear(lin, rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(*shape, 96, requires_grad=True)
    a, b = layer.lora_A, layer.lora_B

    def formula(x, a, b):
        q, k, v = F.linear(x, lin.weight, lin.bias).split(96, dim=-1)
        return torch.cat([q + 2 * x @ a[0].T @ b[0].T, k, v + 2 * x @ a[1].T @ b[1].T], dim=-1)

    ours = layer(x)
    ref = formula(x, a, b)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(ours, (x, a, b), g)
    want = torch.autograd.grad(ref, (x, a, b), g)
    for u, w in zip(got, want):
        torch.testing.assert_close(u, w)
    with torch.no_grad():  # also without autograd (eval), and on an input that needs no grad
        torch.testing.assert_close(layer(x.detach()), ref.detach())


def test_run_without_the_tested_peft_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import importlib.metadata

    from bench.cli import main

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.99.0" if name == "peft" else real_version(name))
    out = tmp_path / "runs"
    assert main(["run", "--methods", "lora,dora", "--tasks", "count", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dora is tested with peft>=0.21,<0.22" in err and "found peft 0.99.0" in err
    assert not out.exists()


# -- AdaLoRA: peft's rank allocator, driven by the fit's per-step hooks ----------------------

class _WithLoss(torch.nn.Module):
    """A timm model with the output peft's ``AdaLoraModel.forward`` expects of a transformers model:
    one with ``.loss`` (the cross-entropy), to which peft adds its orthogonality regulariser."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, labels):
        return type("Output", (), {"loss": F.cross_entropy(self.model(x), labels)})()


def peft_adalora(peft, vit, seed, total_step, tinit, tfinal, **hp):
    """peft's own AdaLoRA as its docs use it (``AdaLoraModel`` on a model with ``.loss``), on a copy of
    ``vit`` with a 10-class head, built under ``seed`` in the order apply builds ours; (model, tuner)."""
    hp = methods.get("adalora").resolve(**hp)
    torch.manual_seed(seed)
    base = copy.deepcopy(vit).requires_grad_(False)
    base.reset_classifier(10)
    config = peft.AdaLoraConfig(
        target_modules=r"model\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", init_r=hp["init_r"],
        target_r=hp["target_r"], lora_alpha=hp["alpha"], deltaT=hp["deltaT"], beta1=hp["beta1"], beta2=hp["beta2"],
        orth_reg_weight=hp["orth_reg_weight"], total_step=total_step, tinit=tinit, tfinal=tfinal)
    tuner = peft.AdaLoraModel(_WithLoss(base), config, "default")
    base.head.requires_grad_(True)
    base.peft_method = "adalora"  # for make_optimizer: the same weight decay groups as ours
    return base, tuner


def _adalora_data():
    g = torch.Generator().manual_seed(4)
    return torch.utils.data.TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % 10)


@pytest.fixture(scope="module")
def adalora_fits(peft, vit):
    """Our adalora trained by ``bench.train.fit`` (4 epochs x 4 steps, a budget allocation every other
    step) and peft's, from the same seed, trained by the loop of peft's docs on the same batches."""
    from bench import train

    ours = applied("adalora", vit, 5, deltaT=2)
    init = state(ours)
    train.fit(ours, _adalora_data(), train.TrainConfig(epochs=4, batch_size=6, lr=3e-2, weight_decay=1e-4, seed=3))
    # 16 steps: tinit = floor(0.15 x 16) = 2, tfinal = floor(0.5 x 16) = 8
    base, tuner = peft_adalora(peft, vit, 5, total_step=16, tinit=2, tfinal=8, deltaT=2)
    assert all(torch.equal(v, init[k]) for k, v in base.state_dict().items()), "not the same model at init"
    plain_fit(base, _adalora_data(), epochs=4, batch_size=6, lr=3e-2, weight_decay=1e-4, seed=3, total_steps=16,
              loss=lambda x, y: tuner(x, y).loss,  # + orth_reg_weight x the regulariser, added by peft
              after_step=tuner.update_and_allocate)  # peft's docs: after optimizer.step(), the step counted from 0
    return ours, base, tuner


def _ranks(model) -> dict[str, int]:
    return {n: int((p != 0).sum()) for n, p in model.named_parameters() if ".lora_E." in n}


def test_adalora_fit_allocates_the_budget_as_peft_s_own_loop(adalora_fits):
    """The fit's hooks (the fit's step count as total_step, the regulariser in the loss,
    update_and_allocate after every step) train exactly as peft's documented loop: equal tensors
    after 16 steps, the same rank pattern, the target budget of 8 per matrix on average, unevenly."""
    ours, base, tuner = adalora_fits
    theirs = base.state_dict()
    differ = [k for k, v in ours.state_dict().items() if not torch.equal(v, theirs[k])]
    assert not differ, differ[:3]
    ranks = _ranks(ours)
    assert ranks == _ranks(base) and sum(ranks.values()) == 8 * 16 and len(set(ranks.values())) > 1, ranks
    theirs_pattern = {k.removeprefix("model."): v for k, v in tuner.peft_config["default"].rank_pattern.items()}
    assert peft_compat.adalora_config(ours).rank_pattern == theirs_pattern  # peft's wrapper adds "model."
    assert peft_compat.adalora_config(ours).total_step == 16


def test_adalora_merges_its_masked_ranks_through_peft(adalora_fits, x):
    ours = adalora_fits[0].eval()
    assert any(0 < r < 12 for r in _ranks(ours).values())  # ranks masked by update_and_allocate
    merged = methods.get("adalora").merge(ours).eval()
    assert type(merged) is VisionTransformer and not any(peft_tuners.is_tuner_layer(m) for m in merged.modules())
    assert peft_compat.TUNER not in vars(merged) and not hasattr(merged, "peft_config")
    with torch.no_grad():
        diff = (merged(x) - ours(x)).abs().max().item()
    assert diff <= 1e-4, diff


def test_adalora_regulariser_is_the_term_peft_s_forward_adds(peft, vit, x):
    base, tuner = peft_adalora(peft, vit, 0, total_step=10, tinit=0, tfinal=0)
    perturb_trainable(base)  # as if trained: the factors are no longer near zero
    ours = applied("adalora", vit, 0)
    ours.load_state_dict(base.state_dict())
    labels = torch.arange(len(x)) % 10
    with torch.no_grad():
        plain = F.cross_entropy(base(x), labels)
        assert torch.equal(tuner(x, labels).loss, plain + methods.get("adalora").extra_loss(ours))


def test_adalora_regulariser_reaches_the_gradients(vit, x):
    """At init E = 0, so the cross-entropy gives P and Q no gradient: after ``train_step`` with the
    method's extra loss their gradients are exactly those of 0.1 x the mean ||P P^T - I||_F."""
    from bench import steps as bench_steps

    method = methods.get("adalora")
    labels = torch.arange(len(x)) % 10
    grads = {}
    for with_extra in (False, True):
        model = applied("adalora", vit, 0).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        extra = (lambda m=model: method.extra_loss(m)) if with_extra else None
        bench_steps.train_step(model, optimizer, x, labels, "cpu", extra_loss=extra)
        grads[with_extra] = {n: p.grad for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert len(grads[True]) == 2 * 16 and all(not g.any() for g in grads[False].values())
    factors = {n: p for n, p in applied("adalora", vit, 0).named_parameters() if n in grads[True]}
    norms = [torch.linalg.matrix_norm((p @ p.T if ".lora_A." in n else p.T @ p) - torch.eye(12))
             for n, p in factors.items()]
    expected = torch.autograd.grad(0.1 * torch.stack(norms).mean(), list(factors.values()))
    for (n, _), want in zip(factors.items(), expected):
        torch.testing.assert_close(grads[True][n], want, rtol=1e-5, atol=1e-8)
        assert want.abs().max() > 1e-4


def test_adalora_keeps_peft_s_tuner_and_allocator_as_we_use_them(peft, vit):
    """The peft internals peft_compat's AdaLoRA functions use: the tuner object kept outside the
    module tree (copied with the model), its RankAllocator's score dicts, update_and_allocate's
    signature and the config fields the schedule sets."""
    from peft.tuners.adalora import RankAllocator

    method = methods.get("adalora")
    model = applied("adalora", vit, 0)
    tuner = vars(model)[peft_compat.TUNER]
    assert isinstance(tuner, peft.AdaLoraModel) and tuner.model is model
    assert isinstance(tuner.rankallocator, RankAllocator) and tuner.rankallocator.peft_config is tuner.peft_config["default"]
    assert not any(m is tuner for m in model.modules()) and not any("peft_tuner" in k for k in model.state_dict())
    assert vars(copy.deepcopy(model))[peft_compat.TUNER].model is not model
    assert list(inspect.signature(peft.AdaLoraModel.update_and_allocate).parameters) == ["self", "global_step"]
    with pytest.raises(RuntimeError, match="begin_fit\\(model, total_steps\\) must come before after_step"):
        method.after_step(model, 1)
    method.begin_fit(model, 40)  # floors of 0.15 x 40 and 0.5 x 40
    config = peft_compat.adalora_config(model)
    assert (config.total_step, config.tinit, config.tfinal, config.rank_pattern) == (40, 6, 20, None)
    assert method.fit_state(model) == {"ipt": {}, "exp_avg_ipt": {}, "exp_avg_unc": {}, "rank_pattern": None}
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    method.after_step(model, 1)
    saved = method.fit_state(model)
    assert set(saved["exp_avg_ipt"]) == {n for n, _ in model.named_parameters() if ".lora_" in n}
    bad = dict(saved, rank_pattern={"blocks.0.attn.qkv.lora_E.default": [True]})
    with pytest.raises(ValueError, match="rank pattern of other tensors"):
        method.load_fit_state(model, bad)
    method.begin_fit(model, 40)  # a new fit forgets the scores ...
    assert tuner.rankallocator.exp_avg_ipt == {}
    method.load_fit_state(model, saved)  # ... which a resume restores
    assert all(torch.equal(tuner.rankallocator.exp_avg_unc[n], t) for n, t in saved["exp_avg_unc"].items())
