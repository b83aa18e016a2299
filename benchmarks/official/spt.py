"""Our ``spt_lora`` and ``spt_adapter`` (methods/spt.py, methods/_spt_plan.py) against the official SPT
code (He et al., ICCV 2023), read from a checkout of ziplab/SPT at run time. Nothing of that code is
in this repository.

    git clone https://github.com/ziplab/SPT /tmp/spt
    .venv/bin/python -m benchmarks.official.spt --repo /tmp/spt

Official: ``engine.py`` ``get_sensitivity`` (the pass and the sweep, called whole as the sensitivity
scripts call it: it writes its ``param_req_<budget>.pth`` files into a temporary folder; its
sensitivities are read from its local ``grad_dict`` as it returns), ``model/vision_transformer_timm.py``
(``VisionTransformerSepQKV``, the sensitivity model; ``VisionTransformerSPT`` with ``BlockSPTParallel``
/ ``BlockSPTSeq``, ``StructuredTuningModule``, ``LinearSPTSparseGrad``; ``freeze_stages``, whose
printed count is read), ``train_spt.py`` (the ``else`` branch of the first ``if args.get_sensitivity:``
of ``main``, which turns a ``param_req`` file into the training model, executed from the file with
``load.exec_source``), ``lib/utils.py`` (``build_optimizer``), the settings of
``configs/vtab_supervised_spt_{lora,adapter}{_sensitivity,}.sh`` and ``train_spt.py``'s defaults, and
the shipped selection ``sensitivity_spt_supervised_lora_a10/cifar/param_req_0.4.pth``. Checked, fp32
on CPU, one thread, on a small timm ViT (width 192, 4 blocks, MLP 768, 8x8 patches of 32x32 images:
1,779,840 scored entries, above the official sweep's last step, 1.58M, below which its ``topk``
fails) with noise on every 1-d tensor, the official models holding the same tensors:

- settings: the sensitivity scripts (batch 32, alpha 10, rank 8, ``--structured_vector``, no amp),
  the training scripts (``BlockSPTParallel`` / ``BlockSPTSeq``, batch 64, lr 1e-3, weight decay 1e-4,
  AdamW, budgets 1.0 ... 0.2, ``--freeze_stage``) and ``train_spt.py``'s defaults (16 batches, drop
  path 0.1, beta 5, the modules' dropout and drop path on) against our constants, defaults and search
  space; the official module's dropout and drop path (0.1, 0.1) against ours;
- the sensitivity model holds our tensors: its eval logits against our backbone's (q, k, v split);
- pass: the sensitivities our ``select`` scores (600 random training images, read in order through
  ``bench.train``'s loader of 64; seed 7) against the official ``grad_dict`` (the same images in
  batches of 32 from a ``DataLoader`` with a ``SequentialSampler``, the same seed before the call: the
  same drop-path masks), every scored tensor, in the official order, for lora / adapter x alpha 10 / 1;
  the key biases (true gradient 0: softmax ignores a shift of every key) are checked to be float
  noise in both;
- sweep: for each of those four, every budget the official sweep considers (1.0, 0.8, 0.6, 0.4, 0.2,
  0.1, 0.05): our ``sweep`` of the official sensitivities, with the official class-token count (768),
  selects the structured matrices, whole vectors and unstructured entries of the official file and
  plans its total; a budget for which the official writes no file is refused by ours;
- select: our ``select`` end to end (our pass, the real class token: 192) at budget 0.05 makes the
  selection our sweep makes of the official sensitivities with that class token (the pass's float
  differences change no selection);
- models: for each distinct selection of the official files (the budgets from 0.2 up select every
  matrix of this small ViT: one selection), the official training model (``train_spt.py`` with
  ``--sensitivity_path`` that file, the settings of the training scripts) against ours of the same
  selection: the trainable count (``freeze_stages``' printed total); the modules' init
  (trunc_normal(0.02) weights, zero biases, in both); after every trainable tensor of ours is
  perturbed and copied into the official model, the logits in eval mode, and in train mode under
  one seed where both draw the same dropout and drop-path masks (adapters; LoRA where every block has
  a q, k or v module: ``BlockSPTParallel`` draws its q/k/v input dropout in every block, ours only
  where a module reads it); the optimizer's decayed / undecayed entries (official ``build_optimizer``,
  ours ``bench.train.make_optimizer``); after three AdamW steps (lr 1e-3, weight decay 1e-4; train mode
  where the masks agree, else eval) every tensor as the layers use it (W + scatter(delta)) and the
  logits. Left out of the tensors: the key shifts (k biases, the k adapters' output biases), whose true
  gradient is 0: their official gradients are checked to be float noise, which Adam turns into steps
  of up to lr, different in the two runs; the difference is printed;
- counts on ViT-B/16 (the official model through ``vit_base_patch16_224_in21k_spt``): the shipped cifar
  ``param_req_0.4`` LoRA file (its totals, and the official training model's count against ours:
  380,738; the sweep counted 380,909, with 171 entries of norms, which are never trained), a hand-made
  selection and our placeholder (a module on q and v of every block), lora and adapter, against
  the literals of tests/test_spt.py and tests/specs_vision.py.

The official files import old timm paths (``timm.models.layers``, ``.helpers``, ``.registry``: still
in timm 1.0.31, with warnings, silenced here); ``register_model`` is given as the identity (timm's
model names are not re-registered); ``_create_vision_transformer_spt`` (timm 0.5's
``build_model_with_cfg``, which here would only load pretrained weights) builds
``VisionTransformerSPT`` directly. The ``param_req`` files hold numpy scalars: they are read with
``torch.load(weights_only=False)`` (the official ``torch.load`` is given that), so run this on a
checkout you trust. No GPU is used: while official code runs, ``Tensor.cuda`` returns the tensor,
``torch.zeros_like(..., device='cuda')`` makes it on the CPU and ``torch.cuda.synchronize`` does
nothing. Official limits, worked around: a file without unstructured entries lists every other
tensor with none, and ``train_spt.py`` cannot build it (``grad_mask`` is None, then its ``.keys()``
fails): such a file (none with this ViT and data) would be given the same selection without
unstructured tensors, said in the output, and the hand-made files list only tensors with entries;
the official sparse gradient builds an n x n matrix for a Linear with n single entries: steps only
where n <= 10,000 (all here: at most 7,538). Exit 0 when every check ran and passed,
1 otherwise, 2 when ``--repo`` is not a checkout of ziplab/SPT.
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

from benchmarks.official.common import Report, images, max_diff, perturb, randomised_vit, run
from benchmarks.official.load import LoadError, exec_source, load_module

REPOSITORY = "ziplab/SPT"
CIFAR = "sensitivity_spt_supervised_lora_a10/cifar/param_req_0.4.pth"
CONFIGS = {(kind, sens): f"configs/vtab_supervised_spt_{kind}{'_sensitivity' if sens else ''}.sh"
           for kind in ("lora", "adapter") for sens in (True, False)}
FILES = ("engine.py", "train_spt.py", "model/vision_transformer_timm.py", "lib/utils.py", CIFAR, *CONFIGS.values())
SMALL = dict(img_size=32, patch_size=8, embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0)
RANK = 8
SEED = 7
CLASSES = 10
SELECT_BUDGET = 0.05  # from 0.2 up the sweep's last plateau: every matrix structured, 20 single entries left
OFFICIAL_CLS = 768  # engine.py adds 768 for the class token to every total
BLOCK = {"lora": "BlockSPTParallel", "adapter": "BlockSPTSeq"}
ALPHAS = (10.0, 1.0)
LR, WEIGHT_DECAY = 1e-3, 1e-4
MAX_SPARSE = 10_000  # the official sparse gradient builds an n x n matrix: steps only up to this many entries
SENSITIVITY_TOL = 1e-4  # max |ours - official| / max |official|, per tensor
LOGIT_TOL = 1e-5
STEP_TOL = 1e-4  # tensors after 3 AdamW steps of lr 1e-3 (each entry moves up to 3e-3; Adam divides by the
#                  root of the squared gradients: an entry whose gradient is about 0 turns float noise into steps)
KEY_NOISE = 1e-9  # a key bias's sensitivity relative to the largest one (its true gradient is 0)
NOISE = 1e-5  # a key shift's |gradient| relative to the other biases'


# ----------------------------------------------------------------------------- the official code

@contextlib.contextmanager
def without_gpu():
    """What the official code sends to the GPU stays on the CPU while it runs."""
    cuda, zeros_like, synchronize = torch.Tensor.cuda, torch.zeros_like, torch.cuda.synchronize

    def cpu_zeros_like(tensor, *args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = tensor.device
        return zeros_like(tensor, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.zeros_like, torch.cuda.synchronize = cpu_zeros_like, lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.zeros_like, torch.cuda.synchronize = cuda, zeros_like, synchronize


def locals_at_return(function, *args, **kwargs) -> tuple[object, dict]:
    """Call ``function``; its result and its local variables as it returns."""
    code, seen = function.__code__, {}

    def profile(frame, event, arg):
        if event == "return" and frame.f_code is code:
            seen.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = function(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return result, seen


def load_pickled(path, **kwargs):
    """A ``param_req`` file: it holds numpy scalars, which ``weights_only`` refuses."""
    kwargs["weights_only"] = False
    return torch.load(path, **kwargs)


class Official:
    """The official files, loaded."""

    def __init__(self, repo: Path):
        self.repo = repo
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.engine = load_module(repo, "engine.py", "spt_engine", path=["."])
            self.vit = load_module(repo, "model/vision_transformer_timm.py", "spt_vit",
                                   replace={"timm.models.registry": {"register_model": lambda fn: fn}})
        self.utils = self.engine.utils  # lib/utils.py, as engine.py imported it
        self.operations = self.engine.vit_operation_dict
        self.torch = types.ModuleType("torch")  # train_spt.py's torch.load of a param_req file
        self.torch.__dict__.update(torch.__dict__)
        self.torch.load = load_pickled

    def sensitivity_model(self, state: dict) -> nn.Module:
        """``VisionTransformerSepQKV`` of the small ViT's shape (train_spt.py: --drop-path 0.1) holding ``state``."""
        model = self.vit.VisionTransformerSepQKV(num_classes=CLASSES, drop_path_rate=0.1, **SMALL)
        model.load_state_dict(state)
        return model

    def get_sensitivity(self, model: nn.Module, batches: list, seed: int, kind: str, alpha: float, folder: Path):
        """``get_sensitivity`` as the sensitivity scripts call it; (grad_dict, scored names, budgets
        considered, {budget: the file it wrote})."""
        exp = f"{kind}_a{alpha:g}"
        cwd = os.getcwd()
        quiet = io.StringIO()
        try:
            os.chdir(folder)
            with without_gpu(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                torch.manual_seed(seed)
                _, local = locals_at_return(
                    self.engine.get_sensitivity, model, nn.CrossEntropyLoss(), batches, torch.device("cpu"),
                    amp=False, dataset="small", low_rank_dim=RANK, structured_vector=True, exp_name=exp,
                    structured_type=kind, alpha=alpha, beta=5.0, structured_only=False, sensitivity_batch_num=16)
        finally:
            os.chdir(cwd)
        files = {float(p.stem.removeprefix("param_req_")): p
                 for p in (folder / f"sensitivity_{exp}" / "small").glob("param_req_*.pth")}
        return local["grad_dict"], list(local["grad_shapes"]), list(local["param_num_dict"]), files

    def training_model(self, path: Path, kind: str, factory, input_size: int) -> tuple[nn.Module, int]:
        """train_spt.py's model of the ``param_req`` file ``path`` (the settings of the training scripts),
        built by ``factory``; and the count ``freeze_stages`` prints."""
        args = SimpleNamespace(sensitivity_path=str(path), model_name="spt", input_size=input_size, drop=0.0,
                               drop_path=0.1, freeze_stage=True, low_rank_dim=RANK, block=BLOCK[kind],
                               nb_classes=CLASSES, structured_type=kind, structured_vector=True,
                               no_structured_drop_out=False, no_structured_drop_path=False)
        namespace = {"args": args, "models": SimpleNamespace(spt=factory), "torch": self.torch, "np": np}
        printed = io.StringIO()
        with without_gpu(), contextlib.redirect_stdout(printed):
            exec_source(self.repo, "train_spt.py", namespace, branch=("main", "args.get_sensitivity", False))
        counts = re.findall(r"^parameters: (\d+) head:", printed.getvalue(), re.M)
        if len(counts) != 1:
            raise LoadError("freeze_stages did not print one 'parameters: N head: M' line")
        return namespace["model"], int(counts[0])

    def small_factory(self, **kwargs) -> nn.Module:
        size = {k: v for k, v in SMALL.items() if k != "img_size"}  # img_size: args.input_size
        return self.vit.VisionTransformerSPT(**size, **kwargs)

    def vit_b_factory(self, **kwargs) -> nn.Module:
        """The official ``vit_base_patch16_224_in21k_spt``, its timm-0.5 builder replaced by the class."""
        held = self.vit._create_vision_transformer_spt
        self.vit._create_vision_transformer_spt = lambda variant, pretrained=False, **kw: self.vit.VisionTransformerSPT(**kw)
        try:
            return self.vit.vit_base_patch16_224_in21k_spt(**kwargs)
        finally:
            self.vit._create_vision_transformer_spt = held

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        config = SimpleNamespace(lr=LR, weight_decay=WEIGHT_DECAY, opt="adamw", opt_eps=1e-8)
        return self.utils.build_optimizer(config, model)


# ----------------------------------------------------------------------------- ours and the formats

def seeded_apply(name: str, backbone: nn.Module, seed: int = 0, **hp) -> nn.Module:
    import methods

    torch.manual_seed(seed)
    return methods.get(name).apply(backbone, num_classes=CLASSES, **hp)


def dataset(n: int = 600, seed: int = 5) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, CLASSES, (n,), generator=g))


def official_state(model: nn.Module) -> dict:
    """Our plain model's tensors under the official names (timm's fused qkv split into q, k, v)."""
    state = {}
    for k, v in model.state_dict().items():
        k = k.replace(".base.", ".")
        if ".attn.qkv." in k:
            for op, part in zip("qkv", v.chunk(3)):
                state[k.replace(".qkv.", f".{op}.")] = part
        elif not k.split(".")[-1].startswith("index_"):
            state[k] = v
    return state


def run_select(method, model: nn.Module, batches, seed: int):
    """Our ``select``; the sensitivities it scored and the selection its sweep made."""
    from methods import spt

    seen, original = {}, spt.sweep

    def recording(scores, *args):
        seen["scores"], seen["selection"] = scores, original(scores, *args)
        return seen["selection"]

    spt.sweep = recording
    try:
        method.select(model, batches, seed)
    finally:
        spt.sweep = original
    return seen["scores"], seen["selection"]


def matrix_names(tuned_matrices, operations) -> list[str]:
    return [f"blocks.{b}.{'attn' if j < 4 else 'mlp'}.{op}.weight"
            for b, row in enumerate(tuned_matrices) for op, j in operations.items() if row[j]]


def file_entries(res: dict) -> dict[str, torch.Tensor]:
    """The unstructured entries of a ``param_req`` file: flat indices per tensor."""
    sizes = [int(np.prod(list(s))) for s in res["unstructured_name_shapes"].values()]
    mask = torch.zeros(sum(sizes))
    mask[res["unstructured_indexes"]] = 1
    return {k: m.nonzero().squeeze(-1) for k, m in zip(res["unstructured_name_shapes"], mask.split(sizes))}


def selection_of(res: dict, operations):
    from methods._spt_plan import Selection

    return Selection(tuple(matrix_names(res["tuned_matrices"], operations)), tuple(res["tuned_vectors"]),
                     file_entries(res), round(float(res["params"]) * 1e6))


def file_of(selection, shapes: dict, operations, depth: int = 12) -> dict:
    """A selection in the official file's format (what train_spt.py reads), listing only the tensors
    with unstructured entries (train_spt.py cannot build a file that lists tensors but has no entry)."""
    unstructured = {n: torch.Size(s) for n, s in shapes.items() if len(selection.entries.get(n, ()))}
    masks = []
    for name, shape in unstructured.items():
        mask = torch.zeros(int(np.prod(list(shape))))
        mask[selection.entries.get(name, torch.zeros(0, dtype=torch.long))] = 1
        masks.append(mask)
    matrices = [[0] * 6 for _ in range(depth)]
    for name in selection.structured:
        parts = name.split(".")
        matrices[int(parts[1])][operations[parts[3]]] = 1
    flat = torch.cat(masks) if masks else torch.zeros(0)
    return {"unstructured_name_shapes": unstructured, "unstructured_indexes": flat.nonzero().squeeze(-1),
            "unstructured_params": int(flat.sum()), "tuned_matrices": matrices, "tuned_vectors": list(selection.vectors)}


def same_selection(ours, res: dict, operations) -> bool:
    theirs = selection_of(res, operations)
    return (set(ours.structured) == set(theirs.structured) and list(ours.vectors) == list(theirs.vectors)
            and set(ours.entries) == set(theirs.entries)
            and all(torch.equal(ours.entries[k], theirs.entries[k]) for k in theirs.entries)
            and ours.planned == theirs.planned)


def equal_selections(a, b) -> bool:
    return (a.structured == b.structured and a.vectors == b.vectors and set(a.entries) == set(b.entries)
            and all(torch.equal(a.entries[k], b.entries[k]) for k in a.entries) and a.planned == b.planned)


def trained(wrapper) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias an ``SPTLinear``'s tensors stand for, read from its raw parameters (not
    through its forward): the base plus each delta at its flat index of the fused tensor."""
    weight, bias = wrapper.base.weight.detach().clone(), wrapper.base.bias.detach().clone()
    for tensor, part in ((weight, "weight"), (bias, "bias")):
        index, delta = getattr(wrapper, f"index_{part}"), getattr(wrapper, f"delta_{part}")
        if delta is not None:
            tensor.view(-1)[index] += delta.detach()
    return weight, bias


def load_from(official: nn.Module, ours: nn.Module, sparse_linear: type) -> None:
    """The official training model with our model's tensors: backbone, head, structured modules, and
    the unstructured deltas and whole q/k/v biases as the values they stand for."""
    with torch.no_grad():
        for name in ("patch_embed", "norm", "head"):
            getattr(official, name).load_state_dict(getattr(ours, name).state_dict())
        official.cls_token.copy_(ours.cls_token)
        official.pos_embed.copy_(ours.pos_embed)
        for ob, tb in zip(official.blocks, ours.blocks):
            ob.norm1.load_state_dict(tb.norm1.state_dict())
            ob.norm2.load_state_dict(tb.norm2.state_dict())
            for owner, ops, wrapper in ((ob.attn, "qkv", tb.attn.qkv), (ob.attn, ("proj",), tb.attn.proj),
                                        (ob.mlp, ("fc1",), tb.mlp.fc1), (ob.mlp, ("fc2",), tb.mlp.fc2)):
                weight, bias = (t.split(wrapper.chunk) for t in trained(wrapper))
                for i, op in enumerate(ops):
                    lin = getattr(owner, op)
                    base_w = wrapper.base.weight.split(wrapper.chunk)[i]
                    base_b = wrapper.base.bias.split(wrapper.chunk)[i]
                    lin.weight.copy_(base_w)
                    lin.bias.copy_(bias[i] if lin.bias.requires_grad else base_b)  # a whole vector: trained in place
                    if isinstance(lin, sparse_linear) and lin.sparse_weight is not None:
                        lin.sparse_weight.copy_((weight[i] - base_w)[tuple(lin.sparse_weight_indexes)])
                    if isinstance(lin, sparse_linear) and lin.sparse_bias is not None:
                        lin.sparse_bias.copy_((bias[i] - base_b)[lin.sparse_bias_indexes[0]])
                    if op in wrapper.structured:
                        getattr(owner, f"structured_{op}").load_state_dict(wrapper.structured[op].state_dict())


def effective(official: nn.Module, sparse_linear: type) -> dict[str, torch.Tensor]:
    """Every official tensor as the layers use it (a Linear's weight and bias with their sparse parts)."""
    out = {}
    for name, module in official.named_modules():
        if isinstance(module, sparse_linear):
            w, b = module.weight.detach().clone(), module.bias.detach().clone()
            if module.sparse_weight is not None:
                w[tuple(module.sparse_weight_indexes)] += module.sparse_weight.detach()
            if module.sparse_bias is not None:
                b[module.sparse_bias_indexes[0]] += module.sparse_bias.detach()
            out[f"{name}.weight"], out[f"{name}.bias"] = w, b
    for name, p in official.named_parameters():
        if not name.rpartition(".")[2].startswith("sparse_"):
            out.setdefault(name, p.detach())
    return out


def ours_effective(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our tensors under the official names (q, k, v split), as the layers use them."""
    out = {n: p.detach() for n, p in model.named_parameters() if n.startswith(("head.", "cls_token", "norm."))}
    for i, block in enumerate(model.blocks):
        for norm in ("norm1", "norm2"):
            for part in ("weight", "bias"):
                out[f"blocks.{i}.{norm}.{part}"] = getattr(getattr(block, norm), part).detach()
        for where, ops, wrapper in (("attn", "qkv", block.attn.qkv), ("attn", ("proj",), block.attn.proj),
                                    ("mlp", ("fc1",), block.mlp.fc1), ("mlp", ("fc2",), block.mlp.fc2)):
            for op, w, b in zip(ops, *(t.split(wrapper.chunk) for t in trained(wrapper))):
                out[f"blocks.{i}.{where}.{op}.weight"], out[f"blocks.{i}.{where}.{op}.bias"] = w.detach(), b.detach()
            for op, module in wrapper.structured.items():
                for n, p in module.named_parameters():
                    out[f"blocks.{i}.{where}.structured_{op}.{n}"] = p.detach()
    return out


def tensors_diff(ours: nn.Module, official: nn.Module, sparse_linear: type) -> float:
    mine, theirs = ours_effective(ours), effective(official, sparse_linear)
    if not set(mine) <= set(theirs):
        return float("inf")
    return max(max_diff(t, theirs[n]) for n, t in mine.items())


# ----------------------------------------------------------------------------- checks

def argparse_defaults(repo: Path) -> dict:
    """train_spt.py's ``add_argument`` defaults (``store_true``: False), read with ``ast``."""
    found = {}
    for node in ast.walk(ast.parse((repo / "train_spt.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            flag = ast.literal_eval(node.args[0]) if isinstance(node.args[0], ast.Constant) else None
            kw = {k.arg: k.value for k in node.keywords}
            if "default" in kw:
                found.setdefault(flag, ast.literal_eval(kw["default"]))
            elif "action" in kw and ast.literal_eval(kw["action"]) == "store_true":
                found.setdefault(flag, False)
    return found


def check_settings(report: Report, repo: Path) -> None:
    from methods import _spt_plan, spt

    defaults = argparse_defaults(repo)
    text = {key: (repo / rel).read_text(encoding="utf-8") for key, rel in CONFIGS.items()}

    def flag(t: str, name: str) -> str | None:
        m = re.search(rf"--{name}[= ]([^\s]+)", t)
        return m.group(1) if m else None

    ok, seen = True, []
    for kind in ("lora", "adapter"):
        sens, trainer = text[(kind, True)], text[(kind, False)]
        alpha = re.search(r"^alpha=(\S+)", sens, re.M).group(1)
        rank = re.search(r"^low_rank_dim=(\S+)", sens, re.M).group(1)
        budgets = re.search(r"for GM in (.+)", trainer).group(1).split()
        lr = re.search(r"for LR in (\S+)", trainer).group(1)
        wd = re.search(r"^WEIGHT_DECAY=(\S+)", trainer, re.M).group(1)
        ok &= (flag(sens, "batch-size") == str(_spt_plan.BATCH_SIZE) and "--get_sensitivity" in sens
               and flag(sens, "structured_type") == kind and "--structured_vector" in sens
               and float(alpha) == spt.SPTLoRA.defaults["alpha"] and int(rank) == spt.SPTLoRA.defaults["rank"]
               and "--no-amp" not in sens and "--amp" not in sens
               and flag(trainer, "block") == BLOCK[kind] and flag(trainer, "structured_type") == kind
               and "--structured_vector" in trainer and "--freeze_stage" in trainer
               and flag(trainer, "batch-size") == "64" and float(lr) == LR and float(wd) == WEIGHT_DECAY
               and [float(b.removeprefix("param_req_")) for b in budgets] == sorted(spt.BUDGETS, reverse=True)
               and flag(trainer, "opt") == "adamw")
        seen.append(f"{kind}: pass batch {flag(sens, 'batch-size')}, alpha {alpha}, rank {rank}; "
                    f"{flag(trainer, 'block')}, batch {flag(trainer, 'batch-size')}, lr {lr}, wd {wd}, "
                    f"budgets {' '.join(b.removeprefix('param_req_') for b in budgets)}")
    ok &= (defaults.get("--sensitivity_batch_num") == _spt_plan.BATCHES and defaults.get("--drop-path") == _spt_plan.PASS_DROP_PATH
           and defaults.get("--beta") == _spt_plan.BETA and defaults.get("--amp") is False
           and defaults.get("--no_structured_drop_out") is False and defaults.get("--no_structured_drop_path") is False)
    seen.append(f"train_spt.py: --sensitivity_batch_num {defaults.get('--sensitivity_batch_num')}, "
                f"--drop-path {defaults.get('--drop-path')}, --beta {defaults.get('--beta')}, amp off")
    report.add("settings: the official VTAB scripts and train_spt.py defaults = our constants, defaults, budgets",
               "; ".join(seen), bool(ok))


def check_module_constants(report: Report, official: Official) -> None:
    """The official structured module's dropout and drop path against ours."""
    from methods import spt

    dims = dict(no_structured_drop_out=False, no_structured_drop_path=False)
    attn = official.vit.AttentionSPTParallel(48, 3, True, structured_list=[1, 0, 0, 0], low_rank_dim=RANK,
                                             structured_type="lora", bias=True, **dims)
    theirs = (attn.structured_drop.p, attn.structured_q.drop_path.drop_prob)
    report.add("structured module: input dropout and drop path (official = ours)",
               f"{theirs[0]:g}, {theirs[1]:g} / {spt.DROPOUT:g}, {spt.DROP_PATH:g}",
               theirs == (spt.DROPOUT, spt.DROP_PATH))


@dataclass
class PassRun:
    """One kind x alpha: the official get_sensitivity (its grad_dict, the names it scored, the budgets it
    considered, the files it wrote) and our select at ``SELECT_BUDGET`` (its scores and selection)."""

    kind: str
    alpha: float
    grad_dict: dict
    scored: list
    budgets: list
    files: dict
    scores: dict
    selection: object

    @property
    def official_scores(self) -> dict[str, torch.Tensor]:
        return {k: self.grad_dict[k] for k in self.scored}


def plain(name: str, vit: nn.Module) -> nn.Module:
    """Our model before its selection, as the pass sees it: the backbone and the head ``select`` uses."""
    from methods._spt_plan import Selection
    from methods.spt import build

    model = seeded_apply(name, vit)
    build(model, Selection(), RANK)
    return model


def run_passes(official: Official, vit: nn.Module, folder: Path) -> list[PassRun]:
    import methods
    from bench import train

    ds = dataset()
    batches = list(DataLoader(ds, batch_size=32, sampler=SequentialSampler(ds)))  # its base seed: drawn here
    runs = []
    for kind in ("lora", "adapter"):
        for alpha in ALPHAS:
            name = f"spt_{kind}"
            ours = seeded_apply(name, vit, budget=SELECT_BUDGET, alpha=alpha)
            ref = official.sensitivity_model(official_state(plain(name, vit)))
            grad_dict, scored, budgets, files = official.get_sensitivity(ref, batches, SEED, kind, alpha, folder)
            scores, selection = run_select(methods.get(name), ours, train._loader(ds, 64, False, 0, 0, "cpu"), SEED)
            runs.append(PassRun(kind, alpha, grad_dict, scored, budgets, files, scores, selection))
    return runs


def check_sensitivity_model(report: Report, official: Official, vit: nn.Module) -> None:
    ours = plain("spt_lora", vit).eval()
    ref = official.sensitivity_model(official_state(ours)).eval()
    x = images(4, SMALL["img_size"])
    with torch.no_grad():
        report.diff("sensitivity model (VisionTransformerSepQKV) with our tensors: eval logits vs ours",
                    max_diff(ref(x), ours(x)), LOGIT_TOL)


def check_pass(report: Report, runs: list[PassRun]) -> None:
    worst, names_ok, noise_ok, same_runs = 0.0, True, True, True
    first = runs[0].grad_dict
    for r in runs:
        names_ok &= list(r.scores) == r.scored
        same_runs &= all(torch.equal(r.grad_dict[k], first[k]) for k in r.scored)
        top = max(g.max().item() for g in r.official_scores.values())
        for name in r.scored:
            theirs, mine = r.grad_dict[name], r.scores[name]
            if name.endswith("attn.k.bias"):
                noise_ok &= mine.max().item() < KEY_NOISE * top and theirs.max().item() < KEY_NOISE * top
                continue
            worst = max(worst, max_diff(mine, theirs) / theirs.abs().max().item())
    n = len(runs[0].scored)
    report.add(f"pass: the tensors scored, in the official order ({n})", "same" if names_ok else "differ", names_ok)
    report.diff(f"pass: sensitivities ours (select) vs official grad_dict, max |diff| / max |official| per tensor "
                f"({n - 4} tensors x {len(runs)} runs)", worst, SENSITIVITY_TOL, names_ok and same_runs)
    report.add("pass: key biases (true gradient 0) are float noise in both", f"< {KEY_NOISE:g} of the largest",
               noise_ok)


def check_sweep(report: Report, official: Official, runs: list[PassRun]) -> None:
    from methods._spt_plan import structured_count, sweep

    for r in runs:
        cost = lambda i, o, kind=r.kind: structured_count(kind, i, o, RANK)  # noqa: E731
        scores = r.official_scores
        same, refused, mixed, totals = 0, 0, False, []
        for budget in r.budgets:
            if budget not in r.files:
                try:
                    sweep(scores, cost, budget, r.alpha, OFFICIAL_CLS)
                except ValueError:
                    refused += 1
                continue
            res = load_pickled(r.files[budget], map_location="cpu")
            ours = sweep(scores, cost, budget, r.alpha, OFFICIAL_CLS)
            same += same_selection(ours, res, official.operations)
            mixed |= bool(ours.structured) and any(len(e) for e in ours.entries.values())
            totals.append(f"{budget:g}: {ours.planned:,}")
        without = len(r.budgets) - len(r.files)
        refusals = f", {refused} of {without} budgets without a file refused" if without else ""
        report.add(f"sweep {r.kind} alpha {r.alpha:g}: ours of the official sensitivities = the official files "
                   f"(structured, vectors, entries, total)",
                   f"{same} of {len(r.files)} files equal{refusals}; totals {', '.join(totals)}",
                   same == len(r.files) and refused == without and len(r.files) > 0 and mixed)


def check_select(report: Report, runs: list[PassRun], vit: nn.Module) -> None:
    from methods._spt_plan import structured_count, sweep

    cls = vit.cls_token.numel()
    ok, notes = True, []
    for r in runs:
        cost = lambda i, o, kind=r.kind: structured_count(kind, i, o, RANK)  # noqa: E731
        expected = sweep(r.official_scores, cost, SELECT_BUDGET, r.alpha, cls)
        same = equal_selections(r.selection, expected)
        ok &= same
        notes.append(f"{r.kind} a{r.alpha:g} {r.selection.planned:,}")
    report.add(f"select end to end (budget {SELECT_BUDGET:g}, class token {cls}) = our sweep of the official sensitivities",
               ", ".join(notes), ok)


def distinct_files(official: Official, r: PassRun, folder: Path) -> list[tuple[float, Path, object]]:
    """(budget, file train_spt.py reads, our selection of it) of each distinct selection of ``r``'s files
    (the budgets of one plateau of the sweep share their selection). A file without unstructured entries
    is given without unstructured tensors: as the sweep writes it (every other tensor listed, none with
    an entry) train_spt.py's grad_mask is None and ``VisionTransformerSPT`` fails on its ``.keys()``."""
    distinct = {}
    for budget in sorted(r.files):
        res = load_pickled(r.files[budget], map_location="cpu")
        selection = selection_of(res, official.operations)
        key = (selection.structured, selection.vectors,
               tuple((k, tuple(v.tolist())) for k, v in selection.entries.items() if len(v)))
        if key in distinct:
            continue
        path = r.files[budget]
        if not float(res["unstructured_params"]):
            path = folder / f"{r.kind}_a{r.alpha:g}_{budget:g}_without_unstructured.pth"
            torch.save(dict(res, unstructured_name_shapes={}, unstructured_indexes=torch.zeros(0).long()), path)
            print(f"note: {r.kind} alpha {r.alpha:g}, budget {budget:g}: no unstructured entry; train_spt.py is given "
                  f"the selection without unstructured tensors (as written, its grad_mask is None and .keys() fails)")
        distinct[key] = (budget, path, selection)
    return list(distinct.values())


def decay_split(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(entries decayed, entries not decayed) by ``optimizer``'s parameter groups."""
    split = [0, 0]
    for group in optimizer.param_groups:
        split[group["weight_decay"] == 0] += sum(p.numel() for p in group["params"])
    return split[0], split[1]


def no_true_gradient(name: str) -> bool:
    """A shift of every key (the k bias, the k adapter's output bias): softmax ignores it, its gradient
    is float noise, which Adam turns into steps of up to lr, different in the two runs."""
    return name.endswith("attn.k.bias") or name.endswith("structured_k.learnable.2.bias")


def compare_model(official: Official, kind: str, alpha: float, budget: float, path: Path, selection,
                  vit: nn.Module) -> dict:
    import methods
    from bench import train
    from methods.families import set_drop_path
    from methods.spt import build

    sparse_linear = official.vit.LinearSPTSparseGrad
    out = {}
    ours = seeded_apply(f"spt_{kind}", vit, budget=budget, alpha=alpha)
    torch.manual_seed(SEED)
    build(ours, selection, RANK)
    model, out["official count"] = official.training_model(path, kind, official.small_factory, SMALL["img_size"])
    out["our count"] = methods.count_trainable(ours)
    init_ok = True
    for m in (ours, model):
        ws = [p.detach().flatten() for n, p in m.named_parameters() if "learnable" in n and n.endswith("weight")]
        if ws:  # trunc_normal_(std=.02), cut at +-2 (timm's bounds, so in effect not cut): the std tells
            init_ok &= abs(torch.cat(ws).std().item() - 0.02) < 0.002
        init_ok &= all(not p.any() for n, p in m.named_parameters() if "learnable" in n and n.endswith("bias"))
    out["init"] = init_ok
    torch.manual_seed(3)
    perturb(ours, 0.05)  # every part of the layers away from its init
    load_from(model, ours, sparse_linear)
    set_drop_path(ours, 0.1)  # train_spt.py --drop-path 0.1, as the official model is built
    x = images(6, SMALL["img_size"])
    with torch.no_grad():
        out["eval"] = max_diff(ours.eval()(x), model.eval()(x))
    qkv_blocks = {s.split(".")[1] for s in selection.structured if s.split(".")[3] in "qkv"}
    same_masks = kind == "adapter" or len(qkv_blocks) == len(ours.blocks)
    if same_masks:
        ours.train(), model.train()
        with torch.no_grad():
            torch.manual_seed(11)
            logits = ours(x)
            torch.manual_seed(11)
            out["train"] = max_diff(logits, model(x))
    out["sparse"] = max([len(e) for e in selection.entries.values()] + [0])
    if out["sparse"] > MAX_SPARSE:
        return out
    ours.train(same_masks)
    model.train(same_masks)
    opt_ours, opt_official = train.make_optimizer(ours, LR, WEIGHT_DECAY, "cpu"), official.optimizer(model)
    out["decay"] = (decay_split(ours, opt_ours), decay_split(model, opt_official))
    noise, signal = 0.0, 0.0
    for step in range(3):
        xs, ys = images(6, SMALL["img_size"], seed=20 + step), (torch.arange(6) + step) % CLASSES
        for m, opt in ((ours, opt_ours), (model, opt_official)):
            torch.manual_seed(30 + step)
            opt.zero_grad()
            F.cross_entropy(m(xs), ys).backward()
            opt.step()
        for n, p in model.named_parameters():
            if p.grad is not None and n.rpartition(".")[2] in ("bias", "sparse_bias"):
                g = p.grad.abs().max().item()
                noise, signal = (max(noise, g), signal) if no_true_gradient(n) else (noise, max(signal, g))
    mine, theirs = ours_effective(ours), effective(model, sparse_linear)
    out["names"] = set(mine) <= set(theirs)
    diffs = {n: max_diff(t, theirs[n]) for n, t in mine.items() if n in theirs}
    out["steps", "train" if same_masks else "eval"] = max(d for n, d in diffs.items() if not no_true_gradient(n))
    out["noise"] = (noise, signal, max([d for n, d in diffs.items() if no_true_gradient(n)] + [0.0]))
    with torch.no_grad():
        out["after"] = max_diff(ours.eval()(x), model.eval()(x))
    return out


def check_models(report: Report, official: Official, runs: list[PassRun], vit: nn.Module, folder: Path) -> None:
    noise = [0.0, 0.0, 0.0]
    for r in runs:
        found = [(b, compare_model(official, r.kind, r.alpha, b, path, sel, vit))
                 for b, path, sel in distinct_files(official, r, folder)]
        label = f"models {r.kind} alpha {r.alpha:g} (budgets {', '.join(f'{b:g}' for b, _ in found)})"
        report.add(f"{label}: trainable count, official printed / ours",
                   ", ".join(f"{b:g}: {o['official count']:,} / {o['our count']:,}" for b, o in found),
                   all(o["official count"] == o["our count"] for _, o in found))
        report.add(f"{label}: init, modules' weights trunc_normal(0.02), biases zero, in both", "",
                   all(o["init"] for _, o in found))
        report.diff(f"{label}: logits, eval, perturbed", max(o["eval"] for _, o in found), LOGIT_TOL)
        trained = [(b, o) for b, o in found if "train" in o]
        if trained:
            report.diff(f"{label}: logits, train mode under one seed (budgets {', '.join(f'{b:g}' for b, _ in trained)}: "
                        f"the same masks)", max(o["train"] for _, o in trained), LOGIT_TOL)
        stepped = [(b, o) for b, o in found if "after" in o]
        skipped = [f"{b:g} ({o['sparse']:,})" for b, o in found if "after" not in o]
        note = f"; not on {', '.join(skipped)}: sparse entries in one Linear above {MAX_SPARSE:,}" if skipped else ""
        if not stepped:
            report.add(f"{label}: 3 AdamW steps", f"none ran{note}", False)
            continue
        report.add(f"{label}: optimizer, entries decayed / not: ours = official build_optimizer",
                   ", ".join(f"{b:g}: {o['decay'][0][0]:,} / {o['decay'][0][1]:,}" for b, o in stepped),
                   all(o["decay"][0] == o["decay"][1] for _, o in stepped))
        for mode in ("train", "eval"):
            done = [(b, o) for b, o in stepped if ("steps", mode) in o]
            if done:
                report.diff(f"{label}: 3 AdamW steps in {mode} mode (budgets {', '.join(f'{b:g}' for b, _ in done)}"
                            f"{note}): tensors as the layers use them", max(o["steps", mode] for _, o in done), STEP_TOL,
                            all(o["names"] for _, o in done))
        report.diff(f"{label}: 3 AdamW steps: logits after, eval", max(o["after"] for _, o in stepped), LOGIT_TOL)
        for _, o in stepped:
            noise = [max(a, b) for a, b in zip(noise, o["noise"])]
    report.add("models: key shifts (k biases, k adapters' output biases) have no true gradient: official |gradient| "
               "max / the other biases' max; their difference after the steps (left out above)",
               f"{noise[0]:.1e} / {noise[1]:.1e}; {noise[2]:.1e}", noise[0] <= NOISE * noise[1])


def vit_b_shapes() -> dict[str, torch.Size]:
    """The official names and shapes of ViT-B/16's scored tensors (our ``scored`` on a meta ViT-B/16)."""
    from bench.backbones import create_meta
    from methods.spt import scored

    model = seeded_apply("spt_lora", create_meta("vit_base_patch16_224"))
    return {n: (t[rows] if rows is not None else t).shape for n, t, rows in scored(model)}


def vit_b_ours(name: str, selection) -> int:
    import methods
    from bench.backbones import create_meta
    from methods.spt import build

    model = seeded_apply(name, create_meta("vit_base_patch16_224"))
    build(model, selection, RANK)
    return methods.count_trainable(model)


def vit_b_official(official: Official, res_or_path, kind: str, folder: Path) -> int:
    path = res_or_path
    if isinstance(res_or_path, dict):
        path = folder / f"vit_b_{kind}_{len(list(folder.iterdir()))}.pth"
        torch.save(res_or_path, path)
    _, printed = official.training_model(path, kind, official.vit_b_factory, 224)
    return printed


def check_vit_b(report: Report, official: Official, folder: Path) -> None:
    from methods._spt_plan import Selection
    from methods.spt import placeholder

    res = load_pickled(official.repo / CIFAR, map_location="cpu")
    entries = file_entries(res)
    in_norms = sum(len(e) for n, e in entries.items() if ".norm" in n)
    totals = (round(float(res["params"]) * 1e6), int(res["structured_params"]), round(float(res["unstructured_params"])))
    theirs = vit_b_official(official, official.repo / CIFAR, "lora", folder)
    mine = vit_b_ours("spt_lora", selection_of(res, official.operations))
    report.add("cifar param_req_0.4 (shipped, LoRA a10): the file's total, structured, unstructured (of which in norms)",
               f"{totals[0]:,}, {totals[1]:,}, {totals[2]:,} ({in_norms})",
               totals[0] == OFFICIAL_CLS + totals[1] + totals[2])
    report.add("cifar param_req_0.4 on ViT-B/16: official training model count / ours (expected 380,738)",
               f"{theirs:,} / {mine:,}", theirs == mine == 380_738)

    shapes = vit_b_shapes()
    hand = Selection(structured=("blocks.0.attn.q.weight", "blocks.3.mlp.fc1.weight"),
                     vectors=("blocks.0.attn.k.bias", "blocks.1.norm1.weight", "norm.bias"),
                     entries={"blocks.2.attn.proj.weight": torch.arange(100) * 7, "blocks.2.norm2.bias": torch.arange(5),
                              "blocks.5.mlp.fc2.bias": torch.arange(7) * 3})
    expected = {("hand-made", "lora"): 46_187, ("hand-made", "adapter"): 68_475,
                ("placeholder", "lora"): 295_680, ("placeholder", "adapter"): 314_304}
    from bench.backbones import create_meta

    place = placeholder(seeded_apply("spt_lora", create_meta("vit_base_patch16_224")))
    for label, selection in (("hand-made", hand), ("placeholder", place)):
        for kind in ("lora", "adapter"):
            theirs = vit_b_official(official, file_of(selection, shapes, official.operations), kind, folder)
            mine = vit_b_ours(f"spt_{kind}", selection)
            report.add(f"{label} selection on ViT-B/16, {kind}: official count / ours / the literal in tests",
                       f"{theirs:,} / {mine:,} / {expected[(label, kind)]:,}", theirs == mine == expected[(label, kind)])


def body(repo: Path, report: Report) -> None:
    official = Official(repo)
    print(f"note: model/vision_transformer_timm.py loaded with {', '.join(official.vit.__replaced__)} as the identity")
    print("note: no GPU is used: while official code runs, Tensor.cuda returns the tensor, "
          "torch.zeros_like(..., device='cuda') makes it on the CPU, torch.cuda.synchronize does nothing")
    check_settings(report, repo)
    check_module_constants(report, official)
    vit = randomised_vit(**SMALL)
    with tempfile.TemporaryDirectory(prefix="spt_official_") as tmp:
        folder = Path(tmp)
        check_sensitivity_model(report, official, vit)
        runs = run_passes(official, vit, folder)
        check_pass(report, runs)
        check_sweep(report, official, runs)
        check_select(report, runs, vit)
        check_models(report, official, runs, vit, folder)
        vit_b = folder / "vit_b"
        vit_b.mkdir()
        check_vit_b(report, official, vit_b)


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, REPOSITORY, FILES, "methods/spt.py spt_lora, spt_adapter (methods/_spt_plan.py)", body, argv)


if __name__ == "__main__":
    sys.exit(main())
