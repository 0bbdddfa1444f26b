"""Atomic file replacement, shared by the search journal and the output directory.

A file is written to a temporary name in the same folder, flushed to disk and
renamed over the target, and the rename itself is made durable: a killed
process leaves either the old file or the new one, never half of one. Only
the standard library, so the numpy-only search engine can use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; a file that open() would have created honours the umask,
        # so a deployment service or another user can read what a run emits.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_chunks(path, (data,))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_chunks(path, (text.encode("utf-8"),))


def fsync_folder(folder: Path) -> None:
    """Make a rename durable; not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unwritable_reason(folder: Path) -> str | None:
    """None when a file can be created in `folder`, else why not.

    Creating and removing a probe is the one sure test: permission bits,
    read-only mounts and root (who passes os.access checks) all show in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".adans-probe-", dir=folder))
    except OSError as e:
        return e.strerror or str(e)
    return None
