"""Readers of the two on-disk layouts: split files -> ``Example`` lists, with every problem a ``UserError``.

VTAB-1k: ``<root>/<task>/<split>.txt``, lines ``relative/path.jpg <label>``, images relative to the
task folder; labels are class ids in ``[0, num_classes)``, used as listed. FGVC (VPT):
``<root>/<folder>/<split>.json``, ``{"relative/path.jpg": label}``, images relative to
``<folder>/<image_dir>``; labels are raw class labels (ints or strings, see ``FgvcLayout``) mapped to
ids ``0..K-1`` once per task. A split named ``a+b`` is the union of splits ``a`` and ``b``.
Task folders may carry any of the catalog's aliases for the task's name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Splits, Suite, Task
from ..errors import UserError


@dataclass(frozen=True)
class Example:
    path: Path  # the image file
    label: int
    where: str  # where it is listed, "file:line" (VTAB) or "file: key" (FGVC), for error messages
    raw: object = None  # the label as the file writes it, when ``label`` is mapped from it (FGVC)


@dataclass(frozen=True)
class ClassMap:
    """Raw FGVC label -> class id, one mapping for every split of a task."""
    ids: dict  # raw label (all ints or all strings) -> id in 0..K-1, in sorted order of the raw labels

    def describe(self) -> str:
        """For ``bench data check``: ``K classes, mapped from strings '001'..'200'`` and the like."""
        raw = list(self.ids)  # insertion order is sorted order
        if not raw:
            return "0 classes"
        if raw == list(range(len(raw))):
            return f"{len(raw)} classes, ints 0..{len(raw) - 1} as listed"
        kind = "strings" if isinstance(raw[0], str) else "ints"
        return f"{len(raw)} classes, mapped from {kind} {raw[0]!r}..{raw[-1]!r}"


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

    def read(self, folder: Path, task: Task, splits: Splits, files: list[Path]) -> tuple[dict, None]:
        """``{file: examples}`` for ``files``; VTAB labels are used as listed (no class map)."""
        image_root = self.image_root(folder, task)
        return {file: self.parse(file, task, image_root) for file in files}, None

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
    """VPT's JSON split files, with labels mapped as VPT's and RLRR's readers map them, but once per task.

    VPT (``KMnP/vpt``, ``src/data/datasets/json_dataset.py``) and RLRR (``zstarN70/RLRR``,
    ``RLRRDatasets/fgvc_json_dataset.py``) map the labels of each split file to contiguous ids with
    ``sorted(set(labels))``, so raw labels may be zero-padded strings (``"001"``, CUB in some preparations)
    or non-contiguous class ids (NABirds: 555 classes whose ids, e.g. 817, come from its class hierarchy).
    We sort the raw values the same way (ints numerically, strings as text, e.g. ``"10"`` before ``"2"``),
    but over the UNION of the task's split files (train, val and test), not per file: per file, a split
    that lacks a class silently shifts the ids of every class after it, so val or test ids would disagree
    with train's. Checks, each a ``UserError`` naming the file: every label an int or a string, never both
    in one task; as many distinct labels as the catalog's ``num_classes``; every class of the test split
    present in the final training split (train+val), since a class never trained cannot be learned. A val
    class absent from train is allowed (tuning scores it wrong for every method alike). The mapping
    depends only on the split files' contents, which ``MANIFEST.sha256`` covers; the decoded-image cache
    holds images only, keyed on the image files, so neither needs to know the mapping.
    """
    suffix = ".json"

    def image_root(self, folder: Path, task: Task) -> Path:
        return folder / task.options.get("image_dir", "")

    def read(self, folder: Path, task: Task, splits: Splits, files: list[Path]) -> tuple[dict, ClassMap]:
        """``{file: examples}`` for ``files``, labels mapped by the task's ``ClassMap`` (returned too),
        which is computed from every split file of the task whichever ``files`` are asked for."""
        task_files = _task_split_files(self, folder, splits)
        raw = {file: self.entries(file) for file in dict.fromkeys([*task_files, *files])}
        classes = self.class_map(folder, task, splits, raw)
        image_root = self.image_root(folder, task)
        parsed = {file: [Example(image_root / key, classes.ids[label], f"{file}: {key!r}", label)
                         for key, label in raw[file]] for file in files}
        return parsed, classes

    def entries(self, file: Path) -> list[tuple[str, int | str]]:
        """``(relative path, raw label)`` pairs of one split file, in file order; all labels ints or all strings."""
        try:
            mapping = json.loads(_read_text(file))
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(mapping, dict):
            raise UserError(f"{file}: expected a JSON object mapping image paths to labels")
        first = None  # (key, kind) of the first label
        for key, label in mapping.items():
            where = f"{file}: {key!r}"
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise UserError(f"{where}: label {label!r} is neither an integer nor a string")
            if first is None:
                first = (key, type(label))
            elif type(label) is not first[1]:
                raise UserError(f"{where}: label {label!r} is {_KIND[type(label)][0]}, but {first[0]!r} has "
                                f"{_KIND[first[1]][0]}: a split file must not mix integer and string labels")
        return list(mapping.items())

    def class_map(self, folder: Path, task: Task, splits: Splits, raw: dict) -> ClassMap:
        """The task's mapping from ``raw`` (``{split file: entries}``, every split file of the task)."""
        kinds = {file: type(entries[0][1]) for file, entries in raw.items() if entries}
        first, first_kind = next(iter(kinds.items()), (None, None))
        for file, kind in kinds.items():
            if kind is not first_kind:
                raise UserError(f"{file}: labels are {_KIND[kind][1]}, but {first} has {_KIND[first_kind][1]}: "
                                f"the split files of a task must not mix integer and string labels")
        trained = {label for file in split_files(self, folder, splits.final_train) for _, label in raw[file]}
        names = ", ".join(f.name for f in split_files(self, folder, splits.final_train))
        for file in split_files(self, folder, splits.test):
            for key, label in raw[file]:
                if label not in trained:
                    raise UserError(f"{file}: {key!r}: label {label!r} is in no file of {splits.final_train} "
                                    f"({names}): a class never trained cannot be learned")
        labels = sorted({label for entries in raw.values() for _, label in entries})
        if len(labels) != task.num_classes:
            listed = ", ".join(f.name for f in raw)
            raise UserError(f"{folder}: {listed} hold {len(labels)} distinct labels, but task {task.name} has "
                            f"{task.num_classes} classes (num_classes in the catalog)")
        return ClassMap({label: i for i, label in enumerate(labels)})


_KIND = {int: ("an integer", "integers"), str: ("a string", "strings")}


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


def read_split(layout, folder: Path, task: Task, split: str, splits: Splits) -> list[Example]:
    """The examples of ``split``; for ``a+b`` the union of both, each image once. ``splits``: the suite's,
    whose files together define FGVC's label mapping."""
    files = split_files(layout, folder, split)
    parsed, _ = layout.read(folder, task, splits, files)
    return _union(files, parsed)


def _union(files: list[Path], parsed: dict) -> list[Example]:
    """The examples of ``files`` (parsed: ``{file: examples}``), each image once; a contradiction is a UserError."""
    if len(files) == 1:
        return parsed[files[0]]
    union: dict[Path, Example] = {}
    for file in files:
        for example in parsed[file]:
            seen = union.setdefault(example.path, example)
            if seen.label != example.label:
                raise UserError(f"{example.where}: label {_shown(example)} contradicts {seen.where} "
                                f"(label {_shown(seen)})")
    return list(union.values())


def _shown(example: Example) -> str:
    return str(example.label) if example.raw is None else repr(example.raw)


def _task_split_files(layout, folder: Path, splits: Splits) -> list[Path]:
    """Every split file of a task, once, in the order of ``splits.all``."""
    names = [*splits.all, splits.tune_train, splits.tune_val, splits.final_train, splits.test]
    return list(dict.fromkeys(f for name in names for f in split_files(layout, folder, name)))


@dataclass(frozen=True)
class TaskFiles:
    """Everything a task of a file-based suite reads: its folder, the examples of each split, the split files,
    and (FGVC) the mapping of its raw labels to class ids."""
    folder: Path
    splits: dict  # split name -> list[Example]
    split_files: list
    classes: ClassMap | None = None

    def images(self) -> dict[Path, str]:
        """Each image listed in any split, once, with where it is first listed."""
        listed: dict[Path, str] = {}
        for examples in self.splits.values():
            for example in examples:
                listed.setdefault(example.path, example.where)
        return listed


def read_task(suite: Suite, root: Path, task: Task) -> TaskFiles:
    """Every split of ``suite.splits.all`` for ``task`` under ``root``; each split file read once."""
    layout = layout_for(suite)
    folder = task_folder(root, task)
    files = [f for split in suite.splits.all for f in split_files(layout, folder, split)]
    parsed, classes = layout.read(folder, task, suite.splits, list(dict.fromkeys(files)))
    splits = {split: _union(split_files(layout, folder, split), parsed) for split in suite.splits.all}
    return TaskFiles(folder, splits, list(dict.fromkeys(files)), classes)


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
