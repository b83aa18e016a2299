"""Writing a file so that no reader ever sees half of it, and no crash leaves half of it behind:
the bytes go to a temporary file in the target's folder, which is then renamed over the target
(``os.replace``, atomic on POSIX within one file system). The file gets the mode the process's
umask gives any new file, not ``mkstemp``'s 0600. Several files that only make sense together
(a report's markdown and the PNGs it links) are written all or none (``atomic_write_all``). The
one such writer of the package.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename (the folder is
    made if missing); on any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~umask())  # mkstemp's 0600 -> what the umask gives any new file
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` of ``text`` encoded (UTF-8 unless told)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_all(files: dict[Path, bytes]) -> None:
    """Write every file of ``files`` or none: each is first written in full beside its place (a full
    disk fails here, and whatever was staged is removed), then each is renamed into place in the
    dict's order, so the file that refers to the others goes last."""
    staged = {path: Path(path).with_name(f".{Path(path).name}.staged-{os.getpid()}") for path in files}
    try:
        for path, data in files.items():
            atomic_write_bytes(staged[path], data)
        for path in files:
            os.replace(staged[path], path)
    except BaseException:
        for partial in staged.values():
            partial.unlink(missing_ok=True)
        raise
