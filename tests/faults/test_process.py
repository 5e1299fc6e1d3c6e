"""Interrupting `akfc compile` with Ctrl-C or SIGTERM, resuming it, and loading checkpoints and specs safely.

The interrupt tests run `akfc compile` in a subprocess through a small
wrapper script. At the third step of epoch 2 the wrapper touches a marker
file and sleeps. The test waits for the marker and then sends the signal, so
the signal always arrives in the middle of epoch 2.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch

from akfc.cli import main
from akfc.errors import SpecError
from akfc.spec import load_spec
from akfc.train import load_checkpoint

WRAPPER = """
import os
import signal
import sys
import time
from pathlib import Path

import akfc.train

# A process started by a pytest-xdist worker inherits its ignored SIGINT, so Python installs no
# KeyboardInterrupt handler. Restore the one an interactive shell gives akfc.
signal.signal(signal.SIGINT, signal.default_int_handler)

marker = Path(os.environ["AKFC_TEST_MARKER"])
state = {"checkpoints": 0, "steps": 0}
write_atomic, task_loss = akfc.train.write_atomic, akfc.train.task_loss


def counting_write(path, write):
    write_atomic(path, write)
    state["checkpoints"] += 1


def waiting_loss(*args, **kwargs):
    if state["checkpoints"] and os.environ.get("AKFC_TEST_WAIT"):
        state["steps"] += 1
        if state["steps"] == 3:
            marker.write_text("epoch 2, step 3")
            time.sleep(120)  # the test's signal ends this sleep
    return task_loss(*args, **kwargs)


akfc.train.write_atomic = counting_write
akfc.train.task_loss = waiting_loss

from akfc.cli import main

sys.exit(main(sys.argv[1:]))
"""

# 2000 training rows in batches of 64: 32 steps per epoch.
ARGUMENTS = [
    "compile", "income=income_mlp_deep_legacy.onnx", "marital=marital_mlp_deep_legacy.onnx",
    "--train", "train.parquet", "--valid", "valid.parquet", "--levels", "1", "--epochs", "3",
    "--batch-size", "64", "--lr", "1e-3", "--dropout", "0.1", "--seed", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(subprocess_workspace) -> Path:
    """A folder with two tiny sources, small train and valid tables, and the wrapper script."""
    return subprocess_workspace("interrupt", WRAPPER)


def _environment(folder: Path, wait: bool) -> dict[str, str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "AKFC_TEST_MARKER": str(folder / "marker")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), environment.get("PYTHONPATH")]))
    if wait:
        environment["AKFC_TEST_WAIT"] = "1"
    return environment


def _akfc(folder: Path, arguments: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "wrapper.py", *arguments]
    return subprocess.run(command, cwd=folder, env=_environment(folder, wait=False), capture_output=True, text=True, timeout=300)


def _interrupt(folder: Path, arguments: list[str], signum: signal.Signals) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run akfc, send `signum` in the middle of epoch 2; return the result and last.pt's sha256 when the signal went out."""
    marker = folder / "marker"
    marker.unlink(missing_ok=True)
    command = [sys.executable, "wrapper.py", *arguments]
    process = subprocess.Popen(command, cwd=folder, env=_environment(folder, wait=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"akfc never reached epoch 2 (exit status {process.returncode}):\n{out}\n{err}")
        time.sleep(0.02)
    checkpoint = _output(folder, arguments).parent / "fused.checkpoints" / "last.pt"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err), digest


def _output(folder: Path, arguments: list[str]) -> Path:
    return folder / arguments[arguments.index("-o") + 1]


def _initializers(path: Path) -> dict[str, bytes]:
    return {init.name: init.SerializeToString() for init in onnx.load(path).graph.initializer}


def _check_interrupted(folder: Path, arguments: list[str], result: subprocess.CompletedProcess[str], digest: str, signame: str) -> str:
    """Check what an interrupt leaves behind; return the resume command from the message."""
    output = _output(folder, arguments)
    checkpoint = output.parent / "fused.checkpoints" / "last.pt"
    resume = shlex.join(["akfc", *arguments, "--resume"])
    assert result.stderr.strip().splitlines()[-1] == (
        f"akfc compile: interrupted by {signame}; the last finished epoch is saved in {checkpoint.relative_to(folder)}; "
        f"continue from it with: {resume}"
    )
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in output.parent.iterdir()) == ["fused.checkpoints"]
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.pt"]
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
    assert load_checkpoint(checkpoint)["epoch"] == 1
    return resume


@pytest.mark.slow
def test_sigint_resume_equals_straight_run(workspace):
    straight = [*ARGUMENTS, "-o", "straight/fused.onnx"]
    assert _akfc(workspace, straight).returncode == 0

    interrupted = [*ARGUMENTS, "-o", "split/fused.onnx"]
    result, digest = _interrupt(workspace, interrupted, signal.SIGINT)
    assert result.returncode == 130, result.stderr
    resume = _check_interrupted(workspace, interrupted, result, digest, "SIGINT")

    # The resume command is the one the message gives, with the wrapper in place of the akfc script.
    resumed = _akfc(workspace, shlex.split(resume)[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 1:" not in resumed.stderr
    assert "epoch 2:" in resumed.stderr
    first, second = _initializers(_output(workspace, straight)), _initializers(_output(workspace, interrupted))
    assert first.keys() == second.keys()
    assert sorted(name for name in first if first[name] != second[name]) == []


@pytest.mark.slow
def test_sigterm_keeps_checkpoint(workspace):
    arguments = [*ARGUMENTS, "-o", "terminated/fused.onnx"]
    result, digest = _interrupt(workspace, arguments, signal.SIGTERM)
    assert result.returncode == 143, result.stderr
    _check_interrupted(workspace, arguments, result, digest, "SIGTERM")


def test_interrupt_before_first_epoch(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("akfc.commands.compile.compile_spec", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "income=income.onnx", "-o", "out/fused.onnx"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "akfc compile: interrupted by SIGINT; no epoch had finished, so there is no checkpoint to resume from; "
        "run the same command again to start over: akfc compile income=income.onnx -o out/fused.onnx"
    )


def test_sigterm_handler_only_during_command(tmp_path, monkeypatch, capsys):
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not interrupt the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("akfc.commands.compile.compile_spec", terminated)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "income=income.onnx"]) == 143
    assert capsys.readouterr().err.splitlines()[-1].startswith("akfc compile: interrupted by SIGTERM; no epoch had finished")
    assert signal.getsignal(signal.SIGTERM) is before


class _Payload:
    """Pickles to a call of Path.touch: loading it with plain pickle creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoint_with_code_rejected(tmp_path):
    checkpoint = tmp_path / "last.pt"
    ran = tmp_path / "payload-ran"
    torch.save({"format": 3, "model": _Payload(ran)}, checkpoint)
    with pytest.raises(SpecError, match=rf"^checkpoint {checkpoint} contains pickled objects other than tensors and plain containers"):
        load_checkpoint(checkpoint)
    assert not ran.exists()
    # The payload is live: loading without weights_only runs it.
    torch.load(checkpoint, weights_only=False)
    assert ran.exists()


def test_checkpoint_pickle_rejected(tmp_path):
    checkpoint = tmp_path / "last.pt"
    ran = tmp_path / "payload-ran"
    checkpoint.write_bytes(pickle.dumps({"model": _Payload(ran)}, protocol=2))
    with pytest.raises(SpecError, match=r"akfc never runs code from a checkpoint\); delete it and rerun without --resume"):
        load_checkpoint(checkpoint)
    assert not ran.exists()


def test_checkpoint_truncated_rejected(tmp_path):
    checkpoint = tmp_path / "last.pt"
    torch.save({"format": 3, "weights": torch.ones(1000)}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    with pytest.raises(SpecError, match=rf"^checkpoint {checkpoint} is not a readable torch checkpoint \(truncated or corrupted\)"):
        load_checkpoint(checkpoint)


def test_checkpoint_not_a_dict_rejected(tmp_path):
    checkpoint = tmp_path / "last.pt"
    torch.save([torch.ones(2)], checkpoint)
    with pytest.raises(SpecError, match=rf"^checkpoint {checkpoint} contains a list, not an akfc checkpoint"):
        load_checkpoint(checkpoint)


def test_spec_code_is_plain_string(tmp_path):
    ran = tmp_path / "payload-ran"
    code = f"__import__('pathlib').Path({str(ran)!r}).touch()"
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        "[task.income]\n"
        f'label = "{code}"\n'
        "[[source]]\n"
        'task = "income"\n'
        f'path = "{code}.onnx"\n'
    )
    spec = load_spec(spec_file)
    assert spec.tasks["income"].label == code
    assert spec.sources[0].path == tmp_path / f"{code}.onnx"
    assert not ran.exists()


def test_spec_code_in_number_rejected(tmp_path):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('[training]\nepochs = "__import__(\'os\').getpid()"\n[[source]]\ntask = "income"\npath = "income.onnx"\n')
    with pytest.raises(SpecError, match=r"^epochs must be an integer >= 0, got \"__import__\('os'\).getpid\(\)\"$"):
        load_spec(spec_file).validate()
