"""``bench data check``: validate a suite's data and print a table of tasks x splits.

Checks that every split is present, every label is valid and every image decodes; the first problem
is a ``UserError`` naming the file (and line). Valid labels: VTAB-1k, ints in [0, class count); FGVC,
raw labels (ints or strings) whose distinct values number the class count and that ``layouts.FgvcLayout``
maps to ids, its mapping shown in a ``labels`` column. ``--hash`` writes each task's
``MANIFEST.sha256`` or, when one exists, verifies the files against it. Manifests are written only
after every selected task passed, all or none, so a failed check writes nothing; a task folder that
cannot take its manifest (a read-only data root) is one line before any image is hashed.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image
from tabulate import tabulate

from ..catalog import Suite, load_suite
from ..errors import UserError
from ..files import atomic_write_all
from . import layouts, manifest
from .loading import manifest_hash, open_split
from .parallel import map_with_progress


def main(args) -> int:
    suite = load_suite(args.suite)
    tasks = [task.name for task in suite.select(args.tasks)]
    if suite.needs_data_root:
        headers, rows = _check_files(suite, layouts.data_root(suite, args.data_root), tasks, args.hash)
    else:
        headers, rows = _check_generated(suite, tasks, args.hash)
    print(tabulate(rows, headers=headers, tablefmt="github"))
    return 0


def _check_files(suite: Suite, root: Path, tasks: list[str], with_hash: bool) -> tuple[list, list]:
    """Rows for tasks read from ``root``; with ``with_hash``, manifests written or verified."""
    rows, to_write, maps_labels = [], [], False
    for name in tasks:
        task = suite.task(name)
        files = layouts.read_task(suite, root, task)
        path = files.folder / manifest.MANIFEST_NAME
        if with_hash and not path.is_file():
            _check_writable(path)  # before hashing every image, not after
        digests = _verify_images(files, want_digests=with_hash, desc=name)
        row = [name, files.folder.name, task.num_classes,
               *(_split_cell([e.label for e in files.splits[s]]) for s in suite.splits.all),
               *([files.classes.describe()] if files.classes is not None else [])]
        maps_labels = files.classes is not None
        if with_hash:
            digests.update({f: manifest.sha256_file(f) for f in files.split_files})
            text = manifest.render(files.folder, digests)
            if path.is_file():
                problem = manifest.first_mismatch(path, text)
                if problem:
                    raise UserError(problem)
                row.append("verified")
            else:
                to_write.append((path, text))
                row.append("written")
        rows.append(row)
    _write_all(to_write)  # only once every task passed
    headers = ["task", "folder", "classes", *suite.splits.all, *(["labels"] if maps_labels else []),
               *(["manifest"] if with_hash else [])]
    return headers, rows


def _check_generated(suite: Suite, tasks: list[str], with_hash: bool) -> tuple[list, list]:
    """Rows for generated tasks (nothing on disk to validate); with ``with_hash``, their data hash."""
    rows = []
    for name in tasks:
        task = suite.task(name)
        cells = [_split_cell(open_split(suite, name, s).labels.tolist()) for s in suite.splits.all]
        rows.append([name, task.group, task.num_classes, *cells, *([manifest_hash(suite, name)[:16]] if with_hash else [])])
    headers = ["task", "group", "classes", *suite.splits.all, *(["sha256 (first 16)"] if with_hash else [])]
    return headers, rows


def _split_cell(labels: list[int]) -> str:
    """``count [lowest..highest label]`` of one split."""
    if not labels:
        return "0"
    return f"{len(labels)} [{min(labels)}..{max(labels)}]"


def _verify_images(files: layouts.TaskFiles, want_digests: bool, desc: str) -> dict[Path, str]:
    """Decode every listed image once; their SHA-256 when asked (one read serves both)."""
    listed = files.images()

    def check(item: tuple[Path, str]) -> tuple[Path, str | None]:
        path, where = item
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError ...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise UserError(f"cannot open image {path} (listed at {where}): {reason}") from None
        return path, hashlib.sha256(data).hexdigest() if want_digests else None

    digests = dict(map_with_progress(check, listed.items(), len(listed), f"checking {desc}"))
    return digests if want_digests else {}


def _cannot_write(path: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the manifest {path}: {exc.strerror or exc}; `--hash` writes one into each task "
                     "folder the first time: run it once where the data root is writable (or without --hash)")


def _check_writable(path: Path) -> None:
    """A UserError unless a file can be made beside ``path`` and ``path`` is free for it (nothing
    is left behind)."""
    if path.exists() or path.is_symlink():
        raise UserError(f"cannot write the manifest {path}: something other than a file is in its place")
    probe = path.with_name(f".{path.name}.write-test-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        probe.unlink()
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _write_all(to_write: list[tuple[Path, str]]) -> None:
    """Write every manifest or none (``bench.files.atomic_write_all``)."""
    try:
        atomic_write_all({path: text.encode("utf-8") for path, text in to_write})
    except OSError as exc:
        raise _cannot_write(Path(exc.filename) if exc.filename else to_write[0][0], exc) from None
