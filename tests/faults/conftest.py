"""Fixtures shared by the fault tests that run akfc in a subprocess."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def subprocess_workspace(adult_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Return a function that makes a folder with two tiny sources, small train and valid tables and a wrapper script."""

    def make(name: str, wrapper: str) -> Path:
        from models.zoo.tiny import build_tiny_zoo

        folder = tmp_path_factory.mktemp(name)
        for task in ("income", "marital"):
            build_tiny_zoo(adult_dir, folder, task=task, architectures=["mlp_deep"], exporters=["legacy"])
        for split, rows in (("train", 2000), ("valid", 500)):
            pq.write_table(pq.read_table(adult_dir / f"{split}.parquet").slice(0, rows), folder / f"{split}.parquet")
        (folder / "wrapper.py").write_text(wrapper)
        return folder

    return make
