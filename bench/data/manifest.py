"""SHA-256 manifests of a task's files, in ``sha256sum`` format, so a data copy can be verified
(``bench data check --hash``) and every run can log which data it saw (``manifest_hash``).

``<task folder>/MANIFEST.sha256`` holds one ``<hex>  <path relative to the task folder>`` line per
split file and listed image, sorted by path; ``sha256sum -c MANIFEST.sha256`` checks it too.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UserError

MANIFEST_NAME = "MANIFEST.sha256"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def render(folder: Path, digests: dict[Path, str]) -> str:
    """Manifest text for ``{file: hex digest}``, paths relative to ``folder``, sorted."""
    rows = sorted((Path(os.path.relpath(path, folder)).as_posix(), digest) for path, digest in digests.items())
    return "".join(f"{digest}  {rel}\n" for rel, digest in rows)


def parse(file: Path) -> dict[str, str]:
    """``{relative path: hex digest}`` from a manifest file."""
    entries = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise UserError(f"{file}:{number}: not a sha256sum line: {line!r}")
        entries[rel.lstrip("*")] = digest
    return entries


def first_mismatch(manifest: Path, text: str) -> str | None:
    """A sentence naming the first file (in path order) whose digest differs from ``manifest``, else None."""
    expected = parse(manifest)
    actual = {rel: digest for digest, _, rel in (line.partition("  ") for line in text.splitlines())}
    folder = manifest.parent
    for rel in sorted(expected.keys() | actual.keys()):
        if rel not in actual:
            return f"{folder / rel} is in {manifest} but no split lists it"
        if rel not in expected:
            return f"{folder / rel} is listed by a split but missing from {manifest}"
        if expected[rel] != actual[rel]:
            return f"{folder / rel} differs from {manifest} (sha256 {actual[rel][:12]}..., expected {expected[rel][:12]}...)"
    return None


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
