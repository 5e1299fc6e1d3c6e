"""Shared fixtures: the prepared Adult data and the tiny zoo of exported sources.

Both are built once per test run. Under pytest-xdist the workers share one
build: the first worker to take the lock builds into the run's common temporary
folder, and the others wait for it and reuse the files. Each pytest-xdist
worker runs torch on one thread.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        import torch

        # The workers already fill the cores (-n is sized to them), so more torch threads per worker would
        # oversubscribe them: with two per worker, OpenMP's spinning threads made a training test 3-4x slower.
        torch.set_num_threads(1)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # NOTE: fcntl exists on POSIX systems only, so these fixtures do not run on Windows.
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _shared_root(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Return a folder shared by every worker of this run; without xdist, the session's own temporary folder."""
    base = tmp_path_factory.getbasetemp()
    # Each xdist worker's basetemp sits inside the run's folder, which is new for every run.
    return base.parent if worker_id != "master" else base


def _build_once(root: Path, name: str, build: Callable[[Path], Any]) -> Any:
    """Run build(folder) once across workers and return its JSON-serialisable result."""
    folder = root / name
    manifest = root / f"{name}.json"
    with _locked(root / f"{name}.lock"):
        if not manifest.exists():
            folder.mkdir(parents=True, exist_ok=True)
            manifest.write_text(json.dumps(build(folder)))
    return json.loads(manifest.read_text())


@pytest.fixture(scope="session")
def adult_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Folder of the prepared ``adult`` configuration (tasks income and marital)."""
    from models.adult.prepare import prepare

    def build(folder: Path) -> str:
        prepare(folder, "adult")
        return str(folder)

    return Path(_build_once(_shared_root(tmp_path_factory, worker_id), "adult", build))


@pytest.fixture(scope="session")
def tiny_zoo(adult_dir: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[tuple[str, str], Path]:
    """{(architecture, exporter): ONNX file} for all five architectures and both exporters, task income.

    Each model is trained for 40 steps only, so the files take seconds to
    build. Each export passed the checker and the parity check against torch.
    """
    from models.zoo.tiny import build_tiny_zoo

    def build(folder: Path) -> list[list[str]]:
        paths = build_tiny_zoo(adult_dir, folder, task="income")
        return [[architecture, exporter, str(path)] for (architecture, exporter), path in paths.items()]

    entries = _build_once(_shared_root(tmp_path_factory, worker_id), "tiny_zoo", build)
    return {(architecture, exporter): Path(path) for architecture, exporter, path in entries}
