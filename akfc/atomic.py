"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file is written to a temporary in the target's folder and renamed over
the target. A temporary is named `.<target name>.<pid>.<random>.tmp`, so that
it is hidden and names both its target and the process that writes it. A
process killed outright (SIGKILL, power loss) cannot remove its temporaries;
`remove_stale_temporaries` removes those whose process is gone, and akfc
calls it before it writes a target again.

An ONNX model above protobuf's 2 GiB limit is saved with its tensors in an
external data file beside it, `<model name>.<16 hex digits>.data`. The data
file is written under a new name first and the model file is renamed into
place last, so the rename switches the pair at once. Until then the old model
file keeps reading the old data file.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import onnx
import onnx.external_data_helper
from google.protobuf.message import DecodeError

__all__ = [
    "PROTOBUF_LIMIT",
    "Writer",
    "external_data_files",
    "make_temporary_folder",
    "remove_stale_temporaries",
    "save_model_atomic",
    "write_all_atomic",
    "write_atomic",
    "write_bytes_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

# The largest message protobuf serialises (2 GiB - 1 byte); a larger model must keep its tensors outside the file.
PROTOBUF_LIMIT = 2**31 - 1

Writer = Callable[[str], object]  # writes a whole file at the path it is given


def write_atomic(path: str | os.PathLike[str], write: Writer) -> None:
    """Call `write(tmp)` on a temporary path in the target folder, then rename it over `path`.

    The temporary file is removed when `write` fails, so a failed or
    interrupted write leaves `path` as it was.
    """
    write_all_atomic([(path, write)])


def write_all_atomic(writes: Sequence[tuple[str | os.PathLike[str], Writer]]) -> None:
    """Write several files, each through `write(tmp)`, and rename them into place only once all are written.

    An exception (Ctrl-C included) before the renames removes every
    temporary and leaves every target as it was. The renames run last and in
    order, so only a process killed between two of them leaves some targets
    new and the rest old.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for target, write in writes:
            target = Path(target)
            fd, name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
            pending.append((tmp, target))
            write(name)
            # mkstemp creates the file private (0600); give it the permissions a plain open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync(tmp)
        for tmp, target in pending:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    for folder in {target.parent for _, target in pending}:
        _fsync(folder)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write text to `path` atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to `path` atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def make_temporary_folder(target: str | os.PathLike[str]) -> Path:
    """Create a scratch folder beside `target`, named like its temporaries so that a stale one is found and removed."""
    target = Path(target)
    return Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))


def save_model_atomic(
    path: str | os.PathLike[str],
    model: onnx.ModelProto,
    *,
    external_data: bool | None = None,
    beside: Sequence[tuple[str | os.PathLike[str], Writer]] = (),
) -> list[Path]:
    """Save an ONNX model, and the files `beside` it, atomically; return the files that make up the model.

    Arguments:
        path: the model file.
        model: the model. A successful save leaves it as it was, tensors
            included. After a failed save, its tensors may point at a data
            file that no longer exists.
        external_data: keep every tensor of 1 KiB or more in one data file
            beside the model (`<name>.<16 hex digits>.data`). None (the
            default) does so only when the model exceeds `PROTOBUF_LIMIT`.
        beside: more (path, write) pairs, written through `write_all_atomic`
            with the model, which is renamed into place last.

    Data files of the model that `path` held before are removed once the new model is in place.
    """
    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() > PROTOBUF_LIMIT
    previous = _referenced_data(path)
    if not external_data:
        write_all_atomic([*beside, (path, lambda tmp: onnx.save(model, tmp))])
        files = [path]
    else:
        location = f"{path.name}.{secrets.token_hex(8)}.data"

        def write_model(tmp: str) -> None:
            # onnx.save moves the tensors' bytes out of `model` into the data file, so they are read back.
            # Reading back sets data_location, which is cleared again on tensors that had none.
            tensors = list(_tensors(model))
            had_location = [tensor.HasField("data_location") for tensor in tensors]
            onnx.save(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=location)
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
            for tensor, had in zip(tensors, had_location):
                if not had:
                    tensor.ClearField("data_location")
            # onnx creates the data file private (0600); give it the permissions a plain open() would.
            os.chmod(path.parent / location, 0o666 & ~_umask())
            _fsync(path.parent / location)

        try:
            write_all_atomic([*beside, (path, write_model)])
        except BaseException:
            (path.parent / location).unlink(missing_ok=True)
            raise
        files = [path, path.parent / location]
    for stale in previous - set(files):
        stale.unlink(missing_ok=True)
    return files


def external_data_files(path: str | os.PathLike[str], model: onnx.ModelProto | None = None) -> list[Path]:
    """Return the external data files an ONNX model file refers to, without reading them.

    `model` is the file's content loaded with load_external_data=False, when the caller has it already.
    """
    path = Path(path)
    if model is None:
        model = onnx.load(str(path), load_external_data=False)
    locations = {
        onnx.external_data_helper.ExternalDataInfo(tensor).location
        for tensor in _tensors(model)
        if onnx.external_data_helper.uses_external_data(tensor)
    }
    return [path.parent / location for location in sorted(locations)]


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed writers of `target` left beside it; return the removed paths.

    Removed are temporaries `.<name>.<pid>.<random>.tmp` (files or scratch
    folders) whose process no longer runs, and, while no live process writes
    `target`, data files `<name>.<16 hex digits>.data` that the model at
    `target` does not refer to. Nothing else is touched.
    """
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        return []
    temporary = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.tmp")
    removed, writing = [], False
    for entry in folder.iterdir():
        match = temporary.fullmatch(entry.name)
        if match is None:
            continue
        if _process_alive(int(match.group(1))):
            writing = True
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if not writing:
        removed += _remove_unreferenced_data(target)
    if removed:
        logger.info("removed %d stale temporaries of %s: %s", len(removed), target, ", ".join(p.name for p in removed))
    return removed


def _remove_unreferenced_data(target: Path) -> list[Path]:
    pattern = _data_file_pattern(target)
    candidates = [entry for entry in target.parent.iterdir() if pattern.fullmatch(entry.name)]
    if not candidates:
        return []
    if target.exists():
        try:
            referenced = set(external_data_files(target))
        except (DecodeError, OSError, ValueError):
            # Which data files an unreadable target needs is unknown, so all of them are kept.
            logger.warning("%s is not a readable ONNX model; its data files %s are kept", target, ", ".join(p.name for p in candidates))
            return []
    else:
        referenced = set()
    removed = [entry for entry in candidates if entry not in referenced]
    for entry in removed:
        entry.unlink(missing_ok=True)
    return removed


def _referenced_data(path: Path) -> set[Path]:
    """Return the data files of the model at `path` that follow akfc's naming; none when there is no readable model."""
    pattern = _data_file_pattern(path)
    # Parsing a large model takes a while, so it is parsed only when data files of akfc's naming exist.
    if not path.is_file() or not any(pattern.fullmatch(entry.name) for entry in path.parent.iterdir()):
        return set()
    try:
        return {file for file in external_data_files(path) if pattern.fullmatch(file.name)}
    except (DecodeError, OSError, ValueError):
        return set()


def _data_file_pattern(model_path: Path) -> re.Pattern[str]:
    """Match the names `save_model_atomic` gives the data files of `model_path`."""
    return re.compile(rf"{re.escape(model_path.name)}\.[0-9a-f]{{16}}\.data")


def _tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    # onnx has no public iterator over initializers and attribute tensors together; its own loader uses this one.
    return onnx.external_data_helper._get_all_tensors(model)


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _process_alive(pid: int) -> bool:
    """Return whether a process with this id runs on this machine."""
    if os.name != "posix":
        # os.kill(pid, 0) terminates the process on Windows, so there a temporary is never taken for stale.
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the process runs under another user
    # NOTE: a process id is only unique on one machine (and in one PID namespace), so on a folder shared
    # between machines or containers a live writer elsewhere looks dead here.
    return True


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk, so that a rename after it cannot expose an empty file after a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return  # Windows cannot open a folder; the renames are still atomic, only less durable
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
        # some file systems cannot flush a folder; the renames are still atomic, only less durable
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
