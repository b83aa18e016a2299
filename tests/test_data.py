"""The data layer: on-disk readers, ``bench data check``, manifests, the decoded-image cache, the demo suite
and the demo backbone's pretraining. Fixtures are tiny JPEG trees written into tmp_path."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import cli
from bench.catalog import load_suite
from bench.data import check as data_check
from bench.data import decoded_cache, demo_tasks, manifest_hash, open_split, split_size, transforms
from bench.errors import UserError

VTAB_SPLITS = {"train800": 4, "val200": 2, "test": 3}


def _jpeg(path: Path, colour, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def _vtab_task(folder: Path, offset: int) -> None:
    """A task folder with train800 (4), val200 (2), train800val200 (their union) and test (3); labels 0/1."""
    lines = {}
    for split, n in VTAB_SPLITS.items():
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}_{i}.jpg"
            _jpeg(folder / rel, (offset + 20 * i, 100, 50 * (i % 2)))
            lines[split].append(f"{rel} {i % 2}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")


@pytest.fixture
def vtab_root(tmp_path: Path) -> Path:
    root = tmp_path / "vtab"
    _vtab_task(root / "cifar100", 0)  # an alias of the catalog's "cifar"
    _vtab_task(root / "dtd", 100)
    return root


def small_fgvc(**num_classes: int):
    """The fgvc catalog with these tasks' ``num_classes`` changed, so that a fixture needs only a few classes."""
    suite = load_suite("fgvc")
    tasks = {name: dataclasses.replace(task, num_classes=num_classes.get(name, task.num_classes))
             for name, task in suite.tasks.items()}
    return dataclasses.replace(suite, tasks=tasks)


@pytest.fixture
def fgvc_suite():
    """fgvc with cub_200_2011 at the 3 classes of ``fgvc_root``."""
    return small_fgvc(cub_200_2011=3)


def _check_with(monkeypatch, suite):
    """Make ``bench data check --suite fgvc`` read ``suite`` instead of the catalog's."""
    monkeypatch.setattr(data_check, "load_suite", lambda name: suite if name == "fgvc" else load_suite(name))


@pytest.fixture
def fgvc_root(tmp_path: Path) -> Path:
    root = tmp_path / "fgvc"
    folder = root / "CUB_200_2011"  # an alias of "cub_200_2011"; images under image_dir "images"; labels 0..2
    for split, n in {"train": 5, "val": 2, "test": 3}.items():
        mapping = {}
        for i in range(n):
            rel = f"{i % 3:03d}.bird/{split}_{i}.jpg"
            _jpeg(folder / "images" / rel, (30 * i, 60, 90), size=(64, 48))
            mapping[rel] = i % 3
        (folder / f"{split}.json").write_text(json.dumps(mapping))
    return root


def _run(*argv) -> int:
    return cli.main(["data", "check", *map(str, argv)])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


# --- readers --------------------------------------------------------------------------------------

def test_vtab_reader_counts_labels_and_alias_folder(vtab_root):
    suite = load_suite("vtab1k")
    expected = {split: [i % 2 for i in range(n)] for split, n in VTAB_SPLITS.items()}
    expected["train800val200"] = expected["train800"] + expected["val200"]
    for split, labels in expected.items():
        ds = open_split(suite, "cifar", split, data_root=vtab_root)
        assert ds.num_classes == 100 and [ds[i][1] for i in range(len(ds))] == labels
    image, label = open_split("vtab1k", "dtd", "test", data_root=vtab_root)[2]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and isinstance(label, int)
    assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_fgvc_reader_union_and_augmentation(fgvc_root, fgvc_suite):
    suite = fgvc_suite
    train, val = (open_split(suite, "cub_200_2011", s, data_root=fgvc_root) for s in ("train", "val"))
    union = open_split(suite, "cub_200_2011", "train+val", data_root=fgvc_root)
    assert (len(train), len(val), len(union)) == (5, 2, 7) and union.num_classes == 3
    assert union.labels.tolist() == train.labels.tolist() + val.labels.tolist()
    augmented = open_split(suite, "cub_200_2011", "train", data_root=fgvc_root, train=True)
    assert augmented.images.shape[-2:] == (256, 256)  # cached before the random crop
    assert augmented[0][0].shape == train[0][0].shape == (3, 224, 224)


def test_open_split_errors(vtab_root):
    with pytest.raises(UserError, match="data root"):
        open_split("vtab1k", "cifar", "test", data_root=vtab_root / "nope")
    with pytest.raises(UserError, match="--data-root"):
        open_split("vtab1k", "cifar", "test")
    with pytest.raises(UserError, match="unknown split"):
        open_split("vtab1k", "cifar", "train", data_root=vtab_root)
    with pytest.raises(UserError, match="no folder for task svhn"):
        open_split("vtab1k", "svhn", "test", data_root=vtab_root)
    (vtab_root / "dtd" / "images" / "test_1.jpg").unlink()
    with pytest.raises(UserError, match=r"test_1\.jpg.*test\.txt:2"):
        open_split("vtab1k", "dtd", "test", data_root=vtab_root)


# --- FGVC labels as the VPT / RLRR preparations write them ---------------------------------------

# style -> (task, folder, raw labels per split in file order, expected id of each raw label, check's labels cell).
# train holds every class, in an order that is not sorted; val and test hold a few, so per-file mapping
# (what VPT's and RLRR's readers do) would give them other ids.
LABEL_STYLES = {
    # CUB as some preparations write it: zero-padded strings ("001".."012"), sorted as text
    "padded_strings": ("cub_200_2011", "CUB_200_2011", {
        "train": ["012", "001", "005", "010", "002", "003", "004", "006", "007", "008", "009", "011"],
        "val": ["010", "002"],
        "test": ["012", "001", "010"],
    }, {"001": 0, "002": 1, "003": 2, "004": 3, "005": 4, "006": 5, "007": 6, "008": 7, "009": 8, "010": 9,
        "011": 10, "012": 11}, "12 classes, mapped from strings '001'..'012'"),
    # strings without padding sort as text too, exactly as VPT's sorted(set(labels)): "10" before "2"
    "unpadded_strings": ("cub_200_2011", "cub", {
        "train": ["12", "1", "5", "10", "2", "3", "4", "6", "7", "8", "9", "11"],
        "val": ["10", "2"],
        "test": ["12", "1", "10"],
    }, {"1": 0, "10": 1, "11": 2, "12": 3, "2": 4, "3": 5, "4": 6, "5": 7, "6": 8, "7": 9, "8": 10, "9": 11},
        "12 classes, mapped from strings '1'..'9'"),
    # NABirds: raw, non-contiguous class ids, sorted numerically
    "sparse_ints": ("nabirds", "NABirds", {
        "train": [817, 2, 400, 1010, 5, 96, 817, 2],
        "val": [400, 96],
        "test": [1010, 5, 2],
    }, {2: 0, 5: 1, 96: 2, 400: 3, 817: 4, 1010: 5}, "6 classes, mapped from ints 2..1010"),
}


def _fgvc_task(folder: Path, labels: dict) -> None:
    """``<folder>/{split}.json`` listing ``images/<split>/<i>.jpg`` with the raw labels given, and those images."""
    for split, raw in labels.items():
        mapping = {}
        for i, label in enumerate(raw):
            rel = f"{split}/{i:02d}.jpg"
            _jpeg(folder / "images" / rel, ((37 * i) % 256, 80, 40), size=(20, 16))
            mapping[rel] = label
        (folder / f"{split}.json").write_text(json.dumps(mapping))


@pytest.mark.parametrize("style", LABEL_STYLES)
def test_fgvc_labels_are_mapped_once_over_all_split_files(tmp_path, style):
    task, folder, labels, ids, _ = LABEL_STYLES[style]
    _fgvc_task(tmp_path / folder, labels)
    suite = small_fgvc(**{task: len(ids)})
    opened = {split: open_split(suite, task, split, data_root=tmp_path)
              for split in ("train", "val", "train+val", "test")}
    for split in ("train", "val", "test"):
        assert opened[split].labels.tolist() == [ids[raw] for raw in labels[split]], split
        assert split_size(suite, task, split, tmp_path) == len(labels[split])
    # train+val is the union of the same ids, and the ids of val and test are those of train
    assert opened["train+val"].labels.tolist() == opened["train"].labels.tolist() + opened["val"].labels.tolist()
    assert opened["test"][0][1] == ids[labels["test"][0]] and opened["test"].num_classes == len(ids)
    if style == "padded_strings":
        assert opened["val"].labels.tolist() == [9, 1]  # "010" -> 9, "002" -> 1 (per file, VPT would say 1, 0)
        assert opened["test"].labels.tolist() == [11, 0, 9]  # "012", "001", "010"
    if style == "sparse_ints":
        assert opened["test"].labels.tolist() == [5, 1, 0]  # 1010, 5, 2


@pytest.mark.parametrize("style", LABEL_STYLES)
def test_check_reports_the_label_mapping(tmp_path, monkeypatch, capsys, style):
    task, folder, labels, ids, cell = LABEL_STYLES[style]
    _fgvc_task(tmp_path / folder, labels)
    _check_with(monkeypatch, small_fgvc(**{task: len(ids)}))
    assert _run("--suite", "fgvc", "--data-root", tmp_path, "--tasks", task) == 0
    out = capsys.readouterr().out
    assert "| labels" in out and cell in out, out
    assert f"{len(labels['train'])} [0..{len(ids) - 1}]" in out  # train holds every class


def test_fgvc_ids_depend_on_every_split_file_and_not_on_order(tmp_path):
    """Test ids come from train.json too: renaming a train-only class re-maps test.json's labels and changes
    the task's data hash, while the decoded images (keyed on the image files alone) are reused."""
    task, folder, labels, _, _ = LABEL_STYLES["padded_strings"]
    _fgvc_task(tmp_path / folder, labels)
    suite = small_fgvc(cub_200_2011=12)
    before = open_split(suite, task, "test", data_root=tmp_path)
    hash_before = manifest_hash(suite, task, tmp_path)
    train_file = tmp_path / folder / "train.json"
    entries = list(json.loads(train_file.read_text()).items())
    train_file.write_text(json.dumps(dict(reversed(entries))))  # another key order: the same ids
    assert open_split(suite, task, "test", data_root=tmp_path).labels.tolist() == [11, 0, 9]
    train_file.write_text(json.dumps({k: "000" if v == "003" else v for k, v in entries}))  # "003" -> "000"
    after = open_split(suite, task, "test", data_root=tmp_path)
    assert after.labels.tolist() == [11, 1, 9]  # "001" is now the second class
    assert after.images is before.images  # the same decoded images
    assert manifest_hash(suite, task, tmp_path) != hash_before


@pytest.mark.parametrize("case, expected", [
    ("wrong_count", r"CUB_200_2011: train\.json, val\.json, test\.json hold 12 distinct labels, "
                    r"but task cub_200_2011 has 200 classes"),
    ("unseen_test_class", r"test\.json: 'test/01\.jpg': label '013' is in no file of train\+val \(train\.json, "
                          r"val\.json\): a class never trained cannot be learned"),
    ("mixed_in_file", r"train\.json: 'train/03\.jpg': label 4 is an integer, but 'train/00\.jpg' has a string: "
                      r"a split file must not mix"),
    ("mixed_across_files", r"test\.json: labels are integers, but .*train\.json has strings"),
    ("not_a_label", r"val\.json: 'val/01\.jpg': label 2\.5 is neither an integer nor a string"),
])
def test_fgvc_label_problems_are_one_line_naming_the_file(tmp_path, monkeypatch, capsys, case, expected):
    _, folder, labels, _, _ = LABEL_STYLES["padded_strings"]
    labels = {split: list(raw) for split, raw in labels.items()}
    classes = 12
    if case == "unseen_test_class":
        labels["test"][1], classes = "013", 13  # 13 classes in all, but "013" is only in test.json
    elif case == "mixed_in_file":
        labels["train"][3] = 4
    elif case == "mixed_across_files":
        labels["test"] = [12, 1, 10]
    elif case == "not_a_label":
        labels["val"][1] = 2.5
    _fgvc_task(tmp_path / folder, labels)
    suite = load_suite("fgvc") if case == "wrong_count" else small_fgvc(cub_200_2011=classes)
    _check_with(monkeypatch, suite)
    assert _run("--suite", "fgvc", "--data-root", tmp_path, "--tasks", "cub_200_2011") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(expected, err), err
    with pytest.raises(UserError, match=expected):  # every split stops the same way, test included
        open_split(suite, "cub_200_2011", "test", data_root=tmp_path)


# --- bench data check -----------------------------------------------------------------------------

def test_check_passes_and_prints_table(vtab_root, fgvc_root, fgvc_suite, monkeypatch, capsys):
    assert _run("--suite", "vtab1k", "--data-root", vtab_root, "--tasks", "cifar,dtd") == 0
    out = capsys.readouterr().out
    assert "| cifar " in out and "cifar100" in out and "| dtd " in out
    assert "4 [0..1]" in out and "6 [0..1]" in out and "3 [0..1]" in out
    assert "labels" not in out  # VTAB labels are read as listed: no labels column
    _check_with(monkeypatch, fgvc_suite)
    assert _run("--suite", "fgvc", "--data-root", fgvc_root, "--tasks", "cub_200_2011") == 0
    out = capsys.readouterr().out
    assert "5 [0..2]" in out and "3 classes, ints 0..2 as listed" in out


@pytest.mark.parametrize("problem, expected", [
    ("corrupt_jpeg", r"images/val200_1\.jpg"),
    ("label_out_of_range", r"train800\.txt:2: label 100 outside \[0, 100\)"),
    ("missing_split", r"missing split file .*val200\.txt"),
    ("bad_line", r"test\.txt:1: expected"),
])
def test_check_names_the_bad_file(vtab_root, capsys, problem, expected):
    folder = vtab_root / "cifar100"
    if problem == "corrupt_jpeg":
        data = (folder / "images/val200_1.jpg").read_bytes()
        (folder / "images/val200_1.jpg").write_bytes(data[:40] + b"\x00garbage" * 20)
    elif problem == "label_out_of_range":
        (folder / "train800.txt").write_text("images/train800_0.jpg 0\nimages/train800_1.jpg 100\n")
    elif problem == "missing_split":
        (folder / "val200.txt").unlink()
    else:
        (folder / "test.txt").write_text("images/test_0.jpg\n")
    assert _run("--suite", "vtab1k", "--data-root", vtab_root, "--tasks", "cifar") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(expected, err), err


def test_check_hash_writes_validates_and_detects_change(vtab_root, capsys):
    folder = vtab_root / "cifar100"
    computed = manifest_hash("vtab1k", "cifar", vtab_root)
    assert _run("--suite", "vtab1k", "--data-root", vtab_root, "--tasks", "cifar", "--hash") == 0
    assert "written" in capsys.readouterr().out
    written = folder / "MANIFEST.sha256"
    lines = written.read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths) and len(lines) == 4 + 9  # split files + distinct images
    assert "train800val200.txt" in paths and "images/test_2.jpg" in paths
    assert manifest_hash("vtab1k", "cifar", vtab_root) == computed == hashlib.sha256(written.read_bytes()).hexdigest()

    assert _run("--suite", "vtab1k", "--data-root", vtab_root, "--tasks", "cifar", "--hash") == 0
    assert "verified" in capsys.readouterr().out
    _jpeg(folder / "images/test_2.jpg", (255, 0, 0))
    assert _run("--suite", "vtab1k", "--data-root", vtab_root, "--tasks", "cifar", "--hash") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "images/test_2.jpg differs" in err


@pytest.mark.parametrize("argv, expected", [
    (["--suite", "vtab1k", "--data-root", "{tmp}/missing"], "does not exist"),
    (["--suite", "vtab1k", "--data-root", "{root}", "--tasks", "cifar,nope"], "unknown task 'nope'"),
    (["--suite", "imagenet", "--data-root", "{root}"], "unknown suite 'imagenet'"),
])
def test_check_rejects_bad_arguments_and_writes_nothing(tmp_path, vtab_root, capsys, argv, expected):
    before = _files(tmp_path)
    argv = [a.format(tmp=tmp_path, root=vtab_root) for a in argv]
    assert _run(*argv, "--hash") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert _files(tmp_path) == before


def test_check_demo_suite(capsys):
    assert _run("--suite", "demo", "--tasks", "cells,count") == 0
    out = capsys.readouterr().out
    assert "| cells " in out and "800 [0..1]" in out and "500 [0..5]" in out and "digits" not in out


# --- decoded-image cache --------------------------------------------------------------------------

@pytest.fixture
def count_opens(monkeypatch):
    calls = []
    real_open = transforms.Image.open

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(transforms.Image, "open", counting_open)
    return calls


def test_each_image_is_decoded_once(vtab_root, count_opens):
    assert split_size("vtab1k", "cifar", "train800val200", vtab_root) == 6 and not count_opens
    ds = open_split("vtab1k", "cifar", "train800val200", data_root=vtab_root)
    assert len(count_opens) == 6
    for _ in range(2):  # two epochs
        assert [label for _, label in ds] == ds.labels.tolist()
    again = open_split("vtab1k", "cifar", "train800val200", data_root=vtab_root, train=True)  # next trial
    assert len(again) == 6 and len(count_opens) == 6


def test_memory_mapped_cache(fgvc_root, fgvc_suite, tmp_path, monkeypatch, count_opens):
    in_memory = open_split(fgvc_suite, "cub_200_2011", "train+val", data_root=fgvc_root)
    monkeypatch.setenv(decoded_cache.MEMORY_BUDGET_ENV, "0.01")  # ~10 KB: forces the memory map
    cache = tmp_path / "cache"
    mapped = open_split(fgvc_suite, "cub_200_2011", "train+val", data_root=fgvc_root, cache_dir=cache)
    assert isinstance(mapped.images, decoded_cache.MappedImages)
    # the cache and its checksum; no partial file left
    assert sorted("".join(p.suffixes) for p in (cache / "decoded").iterdir()) == [".npy", ".npy.sha256"]
    assert np.array_equal(np.asarray(mapped.images.array), in_memory.images)
    opens = len(count_opens)
    again = open_split(fgvc_suite, "cub_200_2011", "train+val", data_root=fgvc_root, cache_dir=cache)
    assert len(count_opens) == opens  # a later run maps the finished cache, decoding nothing
    loader = torch.utils.data.DataLoader(again, batch_size=4, num_workers=2)
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.stack([in_memory[i][0] for i in range(7)]))


# --- demo suite -----------------------------------------------------------------------------------

def test_demo_tasks_are_deterministic_and_splits_disjoint():
    suite = load_suite("demo")
    assert len(suite.tasks) == 6 and [t.group for t in suite.tasks.values()].count("Structured") == 2
    for task in suite.tasks.values():
        o = task.options
        first = demo_tasks.GENERATORS[o["generator"]](np.random.default_rng(o["seed"]), 300, task.num_classes)
        second = demo_tasks.GENERATORS[o["generator"]](np.random.default_rng(o["seed"]), 300, task.num_classes)
        assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])

        splits = {s: open_split(suite, task.name, s) for s in suite.splits.all}
        assert [len(splits[s]) for s in ("train800", "val200", "train800val200")] == [800, 200, 1000]
        assert len(splits["test"]) == (797 if task.name == "digits" else 500)
        keyed = {s: {bytes(np.asarray(d.images[i])) for i in range(len(d))} for s, d in splits.items()}
        assert len(keyed["train800"]) == 800 and len(keyed["val200"]) == 200  # no duplicate images
        assert not keyed["train800"] & keyed["val200"] and not keyed["train800"] & keyed["test"]
        assert not keyed["val200"] & keyed["test"]
        union = splits["train800val200"]
        assert np.array_equal(union.images, np.concatenate([splits["train800"].images, splits["val200"].images]))
        assert np.array_equal(union.labels, np.concatenate([splits["train800"].labels, splits["val200"].labels]))
        assert set(union.labels.tolist()) == set(range(task.num_classes))


def test_demo_samples_are_normalised_tensors():
    image, label = open_split("demo", "digits", "train800", train=True)[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    assert len(manifest_hash("demo", "digits")) == 64 and split_size("demo", "digits", "test") == 797


# --- the demo backbone ----------------------------------------------------------------------------

def test_demo_checkpoint_is_small_headless_and_loads():
    from safetensors.torch import load_file

    from bench.backbones import DEMO_CHECKPOINT, create_demo

    assert DEMO_CHECKPOINT.stat().st_size < 5 * 2**20
    assert not [k for k in load_file(str(DEMO_CHECKPOINT)) if k.startswith("head")]
    assert create_demo(num_classes=6)(torch.zeros(2, 3, 32, 32)).shape == (2, 6)


def test_pretraining_is_deterministic():
    from bench.commands import pretrain_demo

    runs = [pretrain_demo.pretrain(epochs=1, images=256, batch_size=128, log=lambda *_: None) for _ in range(2)]
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(a, b), name


def test_pretraining_beats_random_init_on_linear_probes():
    from bench.commands import pretrain_demo
    from bench.backbones import create_demo

    torch.manual_seed(pretrain_demo.SEED)
    random_init, pretrained = create_demo(pretrained=False), create_demo()
    tasks = ["textures", "location"]  # measured: 68.6 vs 20.6 and 69.2 vs 17.4 (percent)
    margins = [pretrain_demo.linear_probe_accuracy(pretrained, t) - pretrain_demo.linear_probe_accuracy(random_init, t)
               for t in tasks]
    assert min(margins) > 15 and sum(margins) / len(margins) > 25, margins


def test_the_backbones_normalisation_runs_after_the_shared_decode_cache(vtab_root, count_opens):
    """Issue 14: each backbone normalises as its weights expect (CLIP's mean/std here), after the
    uint8 cache: a second backbone's run decodes nothing again and sees the same pixels."""
    from bench.backbones import get

    clip = get("vit_base_patch16_clip_224")
    half = open_split("vtab1k", "dtd", "test", data_root=vtab_root)
    other = open_split("vtab1k", "dtd", "test", data_root=vtab_root, mean=clip.mean, std=clip.std)
    assert len(count_opens) == 3  # decoded once, for both
    assert other.images is half.images
    mean, std = torch.tensor(clip.mean).view(3, 1, 1), torch.tensor(clip.std).view(3, 1, 1)
    for i in range(3):
        assert torch.allclose(other[i][0] * std + mean, half[i][0] * 0.5 + 0.5, atol=1e-6)
    assert get("demo").mean == get("vit_base_patch16_224").std == transforms.MEAN  # the demo keeps 0.5
    assert get("swin_base_patch4_window7_224").mean == (0.485, 0.456, 0.406)
