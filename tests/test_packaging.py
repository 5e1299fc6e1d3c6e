"""Packaging: the wheel layout, the runtime check and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import akfc

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_passes_under_akfc(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("akfc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "akfc/passes/__init__.py" in names
    # every package of the source tree lands in the wheel, subpackages included
    for init in [*ROOT.glob("akfc/**/__init__.py"), *ROOT.glob("passes/**/__init__.py")]:
        relative = init.relative_to(ROOT).as_posix()
        installed = "akfc/" + relative if relative.startswith("passes/") else relative
        assert installed in names, installed
    top_level = {name.split("/")[0] for name in names}
    assert "passes" not in top_level
    assert "models" not in top_level
    assert "tests" not in top_level


def test_editable_install_imports_passes():
    import akfc.passes

    assert Path(akfc.passes.__file__).resolve().parent == ROOT / "passes"


def test_import_without_runtime_names_extras():
    code = "import sys; sys.modules['onnxruntime'] = None; import akfc"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "akfc needs ONNX Runtime, which is not installed" in result.stderr
    assert "pip install 'akfc[cpu]'" in result.stderr
    assert "pip install 'akfc[gpu]'" in result.stderr


def test_cli_version():
    result = subprocess.run([sys.executable, "-m", "akfc.cli", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"akfc {akfc.__version__}"


def test_cli_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "akfc.cli", "--help"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("usage: akfc")
    assert "--version" in result.stdout
