"""The package as a user installs it: ``pip wheel .`` holds every module of ``joindet/``, and an install
of that wheel (not the checkout) imports each of them and runs ``python -m joindet.demo --help`` from a
folder outside the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "joindet"


def _checkout_modules():
    """Dotted names of every module under ``joindet/`` in the checkout (``pkg.__init__`` as ``pkg``)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_package_folder_is_a_regular_package():
    folders = [p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))]
    assert folders
    missing = [str(p.relative_to(REPO_ROOT)) for p in folders if not (p / "__init__.py").is_file()]
    assert not missing, f"folders without __init__.py (left out of a wheel): {missing}"


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """``pip wheel`` of a copy of the checkout's package sources (so that no earlier ``build/`` folder
    leaks in; no dependencies, the venv's own setuptools), installed with ``pip install --target``.
    Returns (wheel path, install folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(PACKAGE, src / "joindet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(src)],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout[-4000:]
    (wheel,) = (tmp / "dist").glob("joindet-*.whl")
    target = tmp / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout[-4000:]
    return wheel, target


def _run_installed(target, *args):
    """Python with the wheel's install first on the path, in a folder outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=target.parent, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def test_wheel_holds_every_module(installed_wheel):
    wheel, _ = installed_wheel
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {".".join((n[:-len("/__init__.py")] if n.endswith("/__init__.py") else n[:-3]).split("/"))
                    for n in zf.namelist() if n.startswith("joindet/") and n.endswith(".py")}
    expected = _checkout_modules()
    assert "joindet.engine.launcher" in expected
    assert expected - in_wheel == set(), f"modules missing from the wheel: {sorted(expected - in_wheel)}"


def test_installed_wheel_imports_every_module_and_runs_the_demo_cli(installed_wheel):
    _, target = installed_wheel
    modules = sorted(_checkout_modules())
    script = (
        "import importlib, sys\n"
        "import joindet\n"
        f"assert joindet.__file__.startswith({str(target)!r}), joindet.__file__\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
        "print('imported', len(sys.modules))\n"
    )
    run = _run_installed(target, "-c", script)
    assert run.returncode == 0, run.stdout[-4000:]
    assert "imported" in run.stdout
    demo = _run_installed(target, "-m", "joindet.demo", "--help")
    assert demo.returncode == 0, demo.stdout[-4000:]
    assert "usage:" in demo.stdout
