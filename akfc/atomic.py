"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_bytes_atomic", "write_text_atomic"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call `write(tmp)` on a temporary path in the target folder, then rename it over `path`.

    The temporary file is removed when `write` fails, so a failed or
    interrupted write leaves `path` as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write text to `path` atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to `path` atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
