"""Atomic outputs: a killed or failing write leaves the old file or a complete new one, and stale temporaries go away.

The kill tests run `akfc compile --force` over an old fused.onnx in a
subprocess, through a wrapper script that sends itself SIGKILL at one point.
That point is the middle of epoch 2, the start of the torch export, or
halfway through writing the fused graph's bytes. A killed process cannot clean up,
so its temporaries stay behind. They must be recognisably stale (hidden,
named after their target and the dead process, ending in .tmp), and the next
compile of the same output removes them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest

import akfc.atomic
import akfc.pipeline
from akfc.atomic import make_temporary_folder, remove_stale_temporaries, save_model_atomic, write_all_atomic, write_atomic
from akfc.cli import main

WRAPPER = """
import os
import signal
import sys
from pathlib import Path

fault = os.environ.get("AKFC_TEST_FAULT", "")


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if fault == "training":
    import akfc.train

    state = {"checkpoints": 0, "steps": 0}
    write_atomic, task_loss = akfc.train.write_atomic, akfc.train.task_loss

    def counting_write(path, write):
        write_atomic(path, write)
        state["checkpoints"] += 1

    def dying_loss(*args, **kwargs):
        if state["checkpoints"]:
            state["steps"] += 1
            if state["steps"] == 3:
                die()
        return task_loss(*args, **kwargs)

    akfc.train.write_atomic = counting_write
    akfc.train.task_loss = dying_loss
elif fault == "export":
    import akfc.recompile

    akfc.recompile.export_module = die
elif fault == "write":
    import onnx

    save = onnx.save

    def save_half(model, path, *args, **kwargs):
        if not Path(path).name.startswith(".fused.onnx."):
            return save(model, path, *args, **kwargs)
        if kwargs.get("save_as_external_data"):
            save(model, path, *args, **kwargs)
            data = Path(path).read_bytes()
        else:
            data = model.SerializeToString()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        die()

    onnx.save = save_half

from akfc.cli import main

sys.exit(main(sys.argv[1:]))
"""

ARGUMENTS = [
    "compile", "income=income_mlp_deep_legacy.onnx", "marital=marital_mlp_deep_legacy.onnx",
    "--train", "train.parquet", "--valid", "valid.parquet", "--levels", "1", "--epochs", "2",
    "--batch-size", "64", "--lr", "1e-3", "--force",
]  # fmt: skip
TARGETS = ("fused.onnx", "report.json", "report.md", "report.png")
STALE = re.compile(r"\.(?:fused\.onnx|report\.json|report\.md|report\.png|last\.pt)\.(\d+)\.[^.]+\.tmp|fused\.onnx\.[0-9a-f]{16}\.data")


@pytest.fixture(scope="module")
def workspace(subprocess_workspace) -> Path:
    """A folder with two tiny sources, small train and valid tables, and the wrapper script."""
    return subprocess_workspace("atomic", WRAPPER)


def _tiny_model(scale: float = 2.0, size: int = 64) -> onnx.ModelProto:
    weight = onnx.numpy_helper.from_array(np.full((size, size), scale, dtype=np.float32), "weight")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "weight"], ["y"])], "tiny",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", size])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", size])],
        [weight],
    )  # fmt: skip
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)


def _run_killed(workspace: Path, name: str, fault: str, extra: tuple[str, ...] = ()) -> tuple[Path, bytes, int]:
    """Run a compile over an old fused.onnx that kills itself at `fault`; return the folder, the old bytes and the dead pid."""
    folder = workspace / name
    folder.mkdir()
    old = _tiny_model().SerializeToString()
    (folder / "fused.onnx").write_bytes(old)
    process = _start(workspace, [*ARGUMENTS, "-o", f"{name}/fused.onnx", *extra], fault)
    out, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err
    return folder, old, process.pid


def _start(workspace: Path, arguments: list[str], fault: str = "") -> subprocess.Popen[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "AKFC_TEST_FAULT": fault}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), environment.get("PYTHONPATH")]))
    command = [sys.executable, "wrapper.py", *arguments]
    return subprocess.Popen(command, cwd=workspace, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _leftovers(folder: Path) -> list[str]:
    """Names in the output folder and its checkpoint folder other than the outputs themselves."""
    names = [p.name for p in folder.iterdir() if p.name not in (*TARGETS, "fused.checkpoints")]
    checkpoints = folder / "fused.checkpoints"
    if checkpoints.is_dir():
        names += [f"fused.checkpoints/{p.name}" for p in checkpoints.iterdir() if p.name != "last.pt"]
    return sorted(names)


def _check_stale(folder: Path, pid: int) -> list[str]:
    """Check that everything a killed compile left is recognisably stale, remove it as the next compile would, return its names."""
    leftovers = _leftovers(folder)
    for name in leftovers:
        match = STALE.fullmatch(Path(name).name)
        assert match is not None, name
        assert match.group(1) in (None, str(pid)), name
    for target in TARGETS:
        remove_stale_temporaries(folder / target)
    remove_stale_temporaries(folder / "fused.checkpoints" / "last.pt")
    assert _leftovers(folder) == []
    return leftovers


@pytest.fixture(scope="module")
def killed_then_resumed(workspace) -> dict:
    """A compile killed in epoch 2, then resumed with --external-data; what each step left."""
    folder, old, pid = _run_killed(workspace, "training", "training")
    after_kill = {"graph": (folder / "fused.onnx").read_bytes(), "leftovers": _leftovers(folder)}
    process = _start(workspace, [*ARGUMENTS, "-o", "training/fused.onnx", "--resume", "--external-data"])
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return {"folder": folder, "old": old, "pid": pid, "after_kill": after_kill}


@pytest.mark.slow
def test_kill_in_training_keeps_old_graph(killed_then_resumed):
    after_kill, pid = killed_then_resumed["after_kill"], killed_then_resumed["pid"]
    assert after_kill["graph"] == killed_then_resumed["old"]
    # The scratch folder with the stem caches, named after the output and the killed process.
    assert [name for name in after_kill["leftovers"] if not STALE.fullmatch(name)] == []
    assert any(name.startswith(f".fused.onnx.{pid}.") for name in after_kill["leftovers"])


@pytest.mark.slow
def test_next_compile_removes_stale_files(killed_then_resumed):
    folder = killed_then_resumed["folder"]
    assert _leftovers(folder) == [f"fused.onnx.{_data_token(folder)}.data"]


def _data_token(folder: Path) -> str:
    (data,) = [p.name for p in folder.iterdir() if p.name.endswith(".data")]
    return data.split(".")[2]


@pytest.mark.slow
def test_external_data_graph_complete(killed_then_resumed):
    folder = killed_then_resumed["folder"]
    graph = folder / "fused.onnx"
    onnx.checker.check_model(str(graph), full_check=True)
    header = onnx.load(str(graph), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in header.graph.initializer)
    assert [p.name for p in akfc.atomic.external_data_files(graph)] == [f"fused.onnx.{_data_token(folder)}.data"]
    assert graph.stat().st_size < (folder / f"fused.onnx.{_data_token(folder)}.data").stat().st_size


@pytest.mark.slow
def test_external_data_graph_serves(killed_then_resumed, workspace, tmp_path, capsys):
    graph = str(killed_then_resumed["folder"] / "fused.onnx")
    valid = str(workspace / "valid.parquet")
    predictions = tmp_path / "predictions.parquet"
    assert main(["run", graph, "--data", valid, "--out", str(predictions)]) == 0
    assert pq.read_table(predictions).column_names == ["income", "marital"]
    assert main(["eval", graph, "--data", valid, "--json", "-"]) == 0
    capsys.readouterr()
    assert main(["inspect", graph, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["fused"] is True


@pytest.mark.slow
def test_missing_data_file_rejected(killed_then_resumed, workspace, tmp_path, capsys):
    folder = killed_then_resumed["folder"]
    alone = tmp_path / "fused.onnx"
    alone.write_bytes((folder / "fused.onnx").read_bytes())
    data = tmp_path / f"fused.onnx.{_data_token(folder)}.data"
    code = main(["run", str(alone), "--data", str(workspace / "valid.parquet"), "--out", str(tmp_path / "p.parquet")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"akfc run: error: {alone} keeps its weights in {data}, which is missing; copy it into the folder of {alone} together with the graph\n"
    )


@pytest.mark.slow
def test_kill_in_export_keeps_old_graph(workspace):
    folder, old, pid = _run_killed(workspace, "export", "export", ("--epochs", "1"))
    assert (folder / "fused.onnx").read_bytes() == old
    leftovers = _check_stale(folder, pid)
    assert [name for name in leftovers if name.startswith(f".fused.onnx.{pid}.")], leftovers


@pytest.mark.slow
@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_kill_in_write_keeps_old_graph(workspace, external):
    extra = ("--epochs", "1", "--external-data") if external else ("--epochs", "1")
    folder, old, pid = _run_killed(workspace, f"write-{external}", "write", extra)
    assert (folder / "fused.onnx").read_bytes() == old
    leftovers = _check_stale(folder, pid)
    # Every report was complete and waiting for its rename; the graph's temporary was half written.
    for report in ("report.json", "report.md", "report.png"):
        assert any(name.startswith(f".{report}.{pid}.") for name in leftovers), (report, leftovers)
    assert any(name.endswith(".data") for name in leftovers) == external


def test_failed_write_keeps_old_outputs(tmp_path, monkeypatch):
    old_graph = _tiny_model(1.0).SerializeToString()
    (tmp_path / "fused.onnx").write_bytes(old_graph)
    (tmp_path / "report.json").write_text("old report")

    def fail(path, report):
        raise OSError("No space left on device")

    monkeypatch.setattr(akfc.pipeline, "draw_report", fail)
    for external in (False, True):
        with pytest.raises(OSError, match="No space left on device"):
            akfc.pipeline._write(tmp_path / "fused.onnx", _tiny_model(3.0), {"tasks": {}}, external)
        assert (tmp_path / "fused.onnx").read_bytes() == old_graph
        assert (tmp_path / "report.json").read_text() == "old report"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx", "report.json"]


def test_write_all_atomic_failure_keeps_old(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("old first")
    second.write_text("old second")

    def interrupted(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_all_atomic([(first, lambda tmp: Path(tmp).write_text("new first")), (second, interrupted)])
    assert first.read_text() == "old first"
    assert second.read_text() == "old second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt", "second.txt"]


def test_write_atomic_replaces_with_umask_mode(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_atomic(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_save_model_external_data(tmp_path):
    model = _tiny_model()
    before = model.SerializeToString()
    path = tmp_path / "model.onnx"
    files = save_model_atomic(path, model, external_data=True)
    assert model.SerializeToString() == before
    assert files[0] == path
    assert re.fullmatch(r"model\.onnx\.[0-9a-f]{16}\.data", files[1].name)
    assert files[1].stat().st_size == 64 * 64 * 4
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 64), dtype=np.float32)})
    assert np.array_equal(y, np.full((1, 64), 128.0, dtype=np.float32))


def test_save_model_replaces_data_file(tmp_path):
    path = tmp_path / "model.onnx"
    first = save_model_atomic(path, _tiny_model(1.0), external_data=True)
    second = save_model_atomic(path, _tiny_model(2.0), external_data=True)
    assert first[1] != second[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", second[1].name])
    save_model_atomic(path, _tiny_model(3.0), external_data=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert onnx.numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])[0, 0] == 3.0


def test_save_model_external_above_limit(tmp_path, monkeypatch):
    model = _tiny_model()
    monkeypatch.setattr(akfc.atomic, "PROTOBUF_LIMIT", model.ByteSize() - 1)
    assert len(save_model_atomic(tmp_path / "large.onnx", model)) == 2
    monkeypatch.setattr(akfc.atomic, "PROTOBUF_LIMIT", model.ByteSize())
    assert save_model_atomic(tmp_path / "small.onnx", model) == [tmp_path / "small.onnx"]


def _dead_pid() -> int:
    """Return the id of a process that has exited and been reaped."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(finished.stdout)


def test_remove_stale_temporaries(tmp_path):
    target = tmp_path / "fused.onnx"
    save_model_atomic(target, _tiny_model(), external_data=True)
    (kept_data,) = [p for p in tmp_path.iterdir() if p.suffix == ".data"]
    dead = _dead_pid()
    stale_file = tmp_path / f".fused.onnx.{dead}.abc123.tmp"
    stale_file.write_bytes(b"half")
    stale_folder = tmp_path / f".fused.onnx.{dead}.def456.tmp"
    (stale_folder / "cache").mkdir(parents=True)
    orphan = tmp_path / "fused.onnx.0123456789abcdef.data"
    orphan.write_bytes(b"data of a graph never renamed into place")
    live = make_temporary_folder(target)  # this process's own: a writer that is still running
    others = [tmp_path / "notes.tmp", tmp_path / ".report.json.12.abc.tmp", tmp_path / "fused.onnx.data"]
    for other in others:
        other.write_text("not ours")

    # While a live process writes the target, its data file may not be referenced yet, so orphans stay.
    assert sorted(remove_stale_temporaries(target)) == sorted([stale_file, stale_folder])
    assert orphan.exists()
    live.rmdir()
    assert remove_stale_temporaries(target) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fused.onnx", kept_data.name, *(p.name for p in others)])


def test_remove_stale_keeps_data_of_unreadable_target(tmp_path):
    target = tmp_path / "fused.onnx"
    target.write_bytes(b"not a model")
    data = tmp_path / "fused.onnx.0123456789abcdef.data"
    data.write_bytes(b"weights")
    assert remove_stale_temporaries(target) == []
    assert data.exists()
