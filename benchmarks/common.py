"""Helpers shared by the benchmarks: machine description, result files, measured subprocesses, fits.

Every benchmark writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png``
through ``write_results``. The JSON carries the ``machine`` block, so that a
figure can be traced to the hardware and versions that produced it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akfc.atomic import write_atomic, write_text_atomic

__all__ = [
    "BENCH_OUT",
    "RESULTS",
    "MeasuredRun",
    "bench_env",
    "loglog_exponent",
    "machine",
    "machine_line",
    "mean_std",
    "python_command",
    "run_measured",
    "save_figure",
    "say",
    "write_results",
]

RESULTS = Path(__file__).resolve().parent / "results"
# Scratch space for benchmark builds (fused graphs, synthetic data, scale sources); reused between runs where keyed.
BENCH_OUT = Path("out") / "bench"

_PACKAGES = ("akfc", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "scikit-learn", "torch-rechub")
_SAMPLE_SECONDS = 0.2  # process-tree RSS sampling interval
_started = time.perf_counter()


def say(message: str) -> None:
    """Print one progress line with the seconds since the benchmark process started."""
    print(f"[{time.perf_counter() - _started:7.1f}s] {message}", flush=True)


def machine() -> dict[str, Any]:
    """Describe this machine: CPU model, core count, memory, OS, Python and the versions of the packages measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def machine_line(info: dict[str, Any]) -> str:
    """Format the machine block as one Markdown line."""
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    return f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM; {info['os']}; Python {info['python']}; {versions}."


def write_results(name: str, result: dict[str, Any], markdown: Sequence[str], plot: Callable[[Path], None] | None) -> list[Path]:
    """Write `name`.json, .md and (when `plot` is given) .png under benchmarks/results, each atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (RESULTS / f"{name}{suffix}" for suffix in (".json", ".md", ".png"))
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(md_path, "\n".join(markdown).rstrip() + "\n")
    paths = [json_path, md_path]
    if plot is not None:
        plot(png_path)
        paths.append(png_path)
    return paths


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(figure)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation (0 for a single value)."""
    values = list(values)
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def loglog_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Fit y = c * x^k by least squares on log x, log y; return k."""
    slope, _ = np.polyfit(np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float)), 1)
    return float(slope)


@dataclass(frozen=True)
class MeasuredRun:
    """A finished subprocess with its wall time and memory peaks."""

    returncode: int
    wall_s: float
    peak_tree_rss_mb: float  # largest sampled sum of resident memory over the process and its descendants
    max_process_rss_mb: float  # largest resident set of any one process in the tree (the kernel's ru_maxrss)


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            # The command name in field 2 may contain spaces, so split after its closing bracket.
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    return parents


def _resident_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_rss_kb(root: int) -> int:
    """Sum the resident memory of the descendants of `root` (not of `root` itself)."""
    parents = _parents()
    tree, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(_resident_kb(pid) for pid in tree)


# A started program inherits the peak RSS of the process that started it, because on exec Linux keeps the
# high-water mark of the memory it replaces (the parent's, after fork or vfork) in ru_maxrss. So the measured
# command is started by this small launcher, not by the benchmark (hundreds of MB once torch is loaded), and
# the launcher reports RUSAGE_CHILDREN: the largest peak of any process in the command's tree that was waited for.
_LAUNCHER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as file:
    json.dump({"maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, file)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(command: Sequence[str], env: dict[str, str] | None = None) -> MeasuredRun:
    """Run a command to completion, its output passed through; measure wall time and the peak RSS of its process tree.

    The tree's sum is sampled every 0.2 s from /proc (Linux only), so a peak
    shorter than that can be missed. The single-process maximum comes from the
    kernel and misses nothing.
    """
    with tempfile.TemporaryDirectory() as scratch:
        usage_path = Path(scratch) / "usage.json"
        started = time.perf_counter()
        launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(usage_path), *command], env=env)
        peak_kb = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_kb
            while not done.is_set():
                peak_kb = max(peak_kb, _tree_rss_kb(launcher.pid))
                done.wait(_SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = launcher.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        max_kb = json.loads(usage_path.read_text())["maxrss_kb"] if usage_path.is_file() else 0
    return MeasuredRun(returncode, wall, peak_kb / 1024, max_kb / 1024)


def python_command(module: str, *arguments: str) -> list[str]:
    """Return the command line that runs a module of this checkout with this interpreter."""
    return [sys.executable, "-m", module, *arguments]


def bench_env(threads: int | None = None) -> dict[str, str]:
    """Return the environment for a measured subprocess, with OpenMP threads pinned when `threads` is given."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env

