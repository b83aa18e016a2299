"""What the runner calls: ``open_split`` (a task's split as a Dataset), ``split_size`` (its length, cheaply)
and ``manifest_hash`` (which data it was)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from torch.utils.data import Dataset

from ..catalog import Suite, Task, load_suite
from ..errors import UserError
from . import demo_tasks, layouts, manifest
from .datasets import LabelledImages
from .decoded_cache import decode_all
from .transforms import MEAN, STD, Decoder, image_plan, tensor_transform


def open_split(suite: Suite | str, task: str, split: str, data_root: str | None = None,
               train: bool = False, cache_dir: str | None = None, mean=MEAN, std=STD,
               flip: bool = False) -> Dataset:
    """Split ``split`` of ``task`` as ``(float32 CHW image, int label)`` pairs, normalised by ``mean``
    and ``std`` (the backbone's; default 0.5/0.5, the ImageNet-21k ViTs' and the demo's).

    ``train=True`` applies the suite's training augmentation (FGVC: random crop and flip), and with
    ``flip`` a random horizontal flip where that augmentation has none (a paper recipe's).
    Images are decoded here, once per process and set of files (see ``decoded_cache``); ``cache_dir``
    holds the memory-mapped decodes of splits too large for memory (default
    ``decoded_cache.default_cache_dir()``). For a split's length alone, ``split_size`` is cheaper.
    """
    suite = load_suite(suite) if isinstance(suite, str) else suite
    spec = suite.task(task)
    _check_split_name(suite, split)
    plan = image_plan(suite, spec, train, flip)
    transform = tensor_transform(plan, mean, std)
    if _is_generated(spec):
        data = _generated(spec)
        if plan.kind != "none" or plan.image_size != data.images.shape[-1]:
            raise UserError(f"suite {suite.name}: generated tasks are {data.images.shape[-1]}px, "
                            f"untransformed; the recipe asks for {plan.kind} to {plan.image_size}px")
        index = data.splits[split]
        return LabelledImages(data.images[index], data.labels[index], transform, spec.num_classes,
                              batchable=plan.deterministic)
    examples = _examples(suite, spec, split, data_root)
    images = decode_all([e.path for e in examples], [e.where for e in examples],
                        Decoder(plan.cache_size, plan.interpolation), plan.cache_size, cache_dir,
                        desc=f"decoding {spec.name}/{split}")
    return LabelledImages(images, [e.label for e in examples], transform, spec.num_classes,
                          batchable=plan.deterministic)


def split_size(suite: Suite | str, task: str, split: str, data_root: str | None = None) -> int:
    """How many examples ``open_split`` would serve, from the split files alone: nothing is decoded."""
    suite = load_suite(suite) if isinstance(suite, str) else suite
    spec = suite.task(task)
    _check_split_name(suite, split)
    if _is_generated(spec):
        return len(_generated(spec).splits[split])
    return len(_examples(suite, spec, split, data_root))


def manifest_hash(suite: Suite | str, task: str, data_root: str | None = None) -> str:
    """SHA-256 naming the task's data: of its ``MANIFEST.sha256`` (written by ``bench data check --hash``)
    when present, else of the same manifest computed now; for generated tasks, of the arrays."""
    suite = load_suite(suite) if isinstance(suite, str) else suite
    spec = suite.task(task)
    if _is_generated(spec):
        data = _generated(spec)
        h = hashlib.sha256()
        for array in (data.images, data.labels, *data.splits.values()):
            h.update(array.tobytes())
        return h.hexdigest()
    root = layouts.data_root(suite, data_root)
    folder = layouts.task_folder(root, spec)
    written = folder / manifest.MANIFEST_NAME
    if written.is_file():
        return manifest.sha256_file(written)
    files = layouts.read_task(suite, root, spec)
    paths = [*files.split_files, *files.images()]
    return manifest.text_sha256(manifest.render(folder, {p: _digest(p) for p in paths}))


def _examples(suite: Suite, task: Task, split: str, data_root: str | None) -> list[layouts.Example]:
    root = layouts.data_root(suite, data_root)
    return layouts.read_split(layouts.layout_for(suite), layouts.task_folder(root, task), task, split, suite.splits)


def _digest(path: Path) -> str:
    try:
        return manifest.sha256_file(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def _is_generated(task: Task) -> bool:
    return "generator" in task.options


def _generated(task: Task) -> demo_tasks.GeneratedTask:
    o = task.options
    return demo_tasks.generate(o["generator"], int(o["seed"]), int(o["size"]), task.num_classes)


def _check_split_name(suite: Suite, split: str) -> None:
    s = suite.splits
    known = dict.fromkeys([*s.all, s.tune_train, s.tune_val, s.final_train, s.test])
    if split not in known:
        raise UserError(f"unknown split {split!r} for suite {suite.name}; known: {', '.join(known)}")
