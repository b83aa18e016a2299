"""Readers of the two on-disk layouts: split files -> ``Example`` lists, with every problem a ``UserError``.

VTAB-1k: ``<root>/<task>/<split>.txt``, lines ``relative/path.jpg <label>``, images relative to the
task folder. FGVC (VPT): ``<root>/<folder>/<split>.json``, ``{"relative/path.jpg": label}``, images
relative to ``<folder>/<image_dir>``. A split named ``a+b`` is the union of splits ``a`` and ``b``.
Task folders may carry any of the catalog's aliases for the task's name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Suite, Task
from ..errors import UserError


@dataclass(frozen=True)
class Example:
    path: Path  # the image file
    label: int
    where: str  # where it is listed, "file:line" (VTAB) or "file: key" (FGVC), for error messages


def data_root(suite: Suite, data_root: str | Path | None) -> Path:
    """The existing folder holding the suite's data."""
    if data_root is None:
        raise UserError(f"suite {suite.name} reads files: give its data folder with --data-root")
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder")
    return root


def task_folder(root: Path, task: Task) -> Path:
    """``<root>/<name>`` for the task's name or one of its aliases (exact first, then any case)."""
    names = (task.name, *task.aliases)
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = {n.lower() for n in names}
    for path in sorted(root.iterdir()):
        if path.is_dir() and path.name.lower() in wanted:
            return path
    raise UserError(f"no folder for task {task.name} under {root} (tried: {', '.join(names)})")


class VtabLayout:
    suffix = ".txt"

    def image_root(self, folder: Path, task: Task) -> Path:
        return folder

    def parse(self, file: Path, task: Task, image_root: Path) -> list[Example]:
        examples = []
        for number, line in enumerate(_read_text(file).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not _is_int(parts[1]):
                raise UserError(f"{where}: expected '<relative/path.jpg> <label>', got {line.strip()!r}")
            examples.append(Example(image_root / parts[0].strip(), _label(int(parts[1]), task, where), where))
        return examples


class FgvcLayout:
    suffix = ".json"

    def image_root(self, folder: Path, task: Task) -> Path:
        return folder / task.options.get("image_dir", "")

    def parse(self, file: Path, task: Task, image_root: Path) -> list[Example]:
        try:
            mapping = json.loads(_read_text(file))
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(mapping, dict):
            raise UserError(f"{file}: expected a JSON object mapping image paths to labels")
        examples = []
        for key, label in mapping.items():
            where = f"{file}: {key!r}"
            if isinstance(label, bool) or not isinstance(label, int):
                raise UserError(f"{where}: label {label!r} is not an integer")
            examples.append(Example(image_root / key, _label(label, task, where), where))
        return examples


LAYOUTS = {"vtab1k": VtabLayout(), "fgvc": FgvcLayout()}


def layout_for(suite: Suite):
    if suite.name not in LAYOUTS:
        raise UserError(f"suite {suite.name} has no on-disk layout; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[suite.name]


def split_files(layout, folder: Path, split: str) -> list[Path]:
    """The file(s) a split is read from; a missing one is a UserError."""
    files = [folder / f"{part}{layout.suffix}" for part in split.split("+")]
    for file in files:
        if not file.is_file():
            raise UserError(f"missing split file {file}")
    return files


def read_split(layout, folder: Path, task: Task, split: str) -> list[Example]:
    """The examples of ``split``; for ``a+b`` the union of both, each image once."""
    image_root = layout.image_root(folder, task)
    files = split_files(layout, folder, split)
    if len(files) == 1:
        return layout.parse(files[0], task, image_root)
    union: dict[Path, Example] = {}
    for file in files:
        for example in layout.parse(file, task, image_root):
            seen = union.setdefault(example.path, example)
            if seen.label != example.label:
                raise UserError(f"{example.where}: label {example.label} contradicts {seen.where} (label {seen.label})")
    return list(union.values())


@dataclass(frozen=True)
class TaskFiles:
    """Everything a task of a file-based suite reads: its folder, the examples of each split, the split files."""
    folder: Path
    splits: dict  # split name -> list[Example]
    split_files: list

    def images(self) -> dict[Path, str]:
        """Each image listed in any split, once, with where it is first listed."""
        listed: dict[Path, str] = {}
        for examples in self.splits.values():
            for example in examples:
                listed.setdefault(example.path, example.where)
        return listed


def read_task(suite: Suite, root: Path, task: Task) -> TaskFiles:
    """Every split of ``suite.splits.all`` for ``task`` under ``root``."""
    layout = layout_for(suite)
    folder = task_folder(root, task)
    splits = {split: read_split(layout, folder, task, split) for split in suite.splits.all}
    files = [f for split in suite.splits.all for f in split_files(layout, folder, split)]
    return TaskFiles(folder, splits, list(dict.fromkeys(files)))


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read split file {file}: {exc}") from None


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _label(label: int, task: Task, where: str) -> int:
    if not 0 <= label < task.num_classes:
        raise UserError(f"{where}: label {label} outside [0, {task.num_classes}) for task {task.name}")
    return label
