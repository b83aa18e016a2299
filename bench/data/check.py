"""``bench data check``: validate a suite's data and print a table of tasks x splits.

Checks that every split is present, every label is in [0, class count) and every image decodes;
the first problem is a ``UserError`` naming the file (and line). ``--hash`` writes each task's
``MANIFEST.sha256`` or, when one exists, verifies the files against it. Manifests are written only
after every selected task passed, so a failed check writes nothing.
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
from . import layouts, manifest
from .loading import manifest_hash, open_split
from .parallel import map_with_progress


def main(args) -> int:
    suite = load_suite(args.suite)
    tasks = suite.select(args.tasks)
    if not suite.needs_data_root:
        rows = [_generated_row(suite, task.name, args.hash) for task in tasks]
        headers = ["task", "group", "classes", *suite.splits.all, *(["sha256"] if args.hash else [])]
        print(tabulate(rows, headers=headers, tablefmt="github"))
        return 0
    root = layouts.data_root(suite, args.data_root)
    rows, pending = [], []
    for task in tasks:
        files = layouts.read_task(suite, root, task)
        digests = _verify_images(files, want_digests=args.hash, desc=task.name)
        status = ""
        if args.hash:
            digests.update({f: manifest.sha256_file(f) for f in files.split_files})
            text = manifest.render(files.folder, digests)
            written = files.folder / manifest.MANIFEST_NAME
            if written.is_file():
                problem = manifest.first_mismatch(written, text)
                if problem:
                    raise UserError(problem)
                status = "verified"
            else:
                pending.append((written, text))
                status = "written"
        rows.append([task.name, files.folder.name, task.num_classes,
                     *(_split_cell([e.label for e in files.splits[s]]) for s in suite.splits.all), *([status] if args.hash else [])])
    for path, text in pending:
        _write_atomically(path, text)
    headers = ["task", "folder", "classes", *suite.splits.all, *(["manifest"] if args.hash else [])]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    return 0


def _split_cell(labels: list[int]) -> str:
    """``count [lowest..highest label]`` of one split."""
    if not labels:
        return "0"
    return f"{len(labels)} [{min(labels)}..{max(labels)}]"


def _generated_row(suite: Suite, task: str, with_hash: bool) -> list:
    spec = suite.task(task)
    cells = [_split_cell(open_split(suite, task, s).labels.tolist()) for s in suite.splits.all]
    return [task, spec.group, spec.num_classes, *cells, *([manifest_hash(suite, task)[:16]] if with_hash else [])]


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


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
