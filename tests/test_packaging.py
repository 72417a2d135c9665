"""The package as a user installs it: ``pip wheel .`` holds every module of ``joindet/``, its configs and
the ``joindet-train`` command, and an install of that wheel (not the checkout), from a folder outside the
checkout, imports each module, trains and evaluates from configs named ``joindet://<name>``, and runs
``python -m joindet.demo --help`` with its configs read from the install."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO_ROOT, TINY_DATA_OPTS, TINY_MODEL_OPTS

PACKAGE = REPO_ROOT / "joindet"
CONFIGS = PACKAGE / "configs"  # package data (yacs .yaml, LazyConfig .py), not modules

# A 2-iteration mini pretraining on 8 images of 64 px (random-crop version 0, no prior-quality pass), as
# tests/test_analysis_tools.py's tiny runs
TINY_PRETRAIN_OPTS = [
    *TINY_DATA_OPTS, *TINY_MODEL_OPTS,
    "DATASETS.TRAIN", "('synth_train_unlabeled',)", "DATASETS.TEST", "()",
    "JOINDET.LSJ.IMAGE_SIZE", "64", "JOINDET.EMBED_CROP_SIZE", "32",
    "JOINDET.PRIORS.INIT_SOURCE", "random_crops", "JOINDET.PRIORS.NUM_WORKERS", "0", "JOINDET.PRIORS.TOPK", "10",
    "JOINDET.PRIORS.EVAL_DATASET", "",
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "1", "SEED", "0",
]
TINY_EVAL_OPTS = [*TINY_DATA_OPTS, *TINY_MODEL_OPTS,
                  "MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "1"]


def _checkout_modules():
    """Dotted names of every module under ``joindet/`` in the checkout (``pkg.__init__`` as ``pkg``; not the
    LazyConfig files under ``joindet/configs/``, which are package data)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if CONFIGS in path.parents:
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _checkout_configs():
    """Paths of every config file under ``joindet/configs/``, relative to ``joindet/``."""
    return {p.relative_to(PACKAGE).as_posix() for p in CONFIGS.rglob("*")
            if p.suffix in (".yaml", ".py") and "__pycache__" not in p.parts}


def test_checkout_config_folders_are_links_to_the_package():
    """``configs/`` and ``projects/JoinDet/configs/`` of the checkout are the packaged configs (relative links)."""
    for link, target in ((REPO_ROOT / "configs", CONFIGS), (REPO_ROOT / "projects" / "JoinDet" / "configs",
                                                           CONFIGS / "lazy")):
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), link
        assert link.resolve() == target.resolve()
    assert (REPO_ROOT / "configs" / "mini" / "pretrain_synth.yaml").is_file()


def test_every_package_folder_is_a_regular_package():
    folders = [p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))
               and p != CONFIGS and CONFIGS not in p.parents]
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


def _env(target):
    """Only the install on the path (the checkout's ``joindet`` is not importable), one OpenMP thread, and a
    synthetic-data cache of the test's own."""
    return {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1",
            "JOINDET_CACHE": str(target.parent / "cache")}


def _run_installed(target, *args, cwd=None):
    """Python with the wheel's install first on the path, in a folder outside the checkout."""
    return subprocess.run([sys.executable, *args], cwd=cwd or target.parent, env=_env(target),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def test_wheel_holds_every_module(installed_wheel):
    wheel, _ = installed_wheel
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {".".join((n[:-len("/__init__.py")] if n.endswith("/__init__.py") else n[:-3]).split("/"))
                    for n in zf.namelist() if n.startswith("joindet/") and n.endswith(".py")}
    expected = _checkout_modules()
    assert "joindet.engine.launcher" in expected and "joindet.model_zoo" in expected
    assert expected - in_wheel == set(), f"modules missing from the wheel: {sorted(expected - in_wheel)}"


def test_wheel_holds_every_config_and_the_train_command(installed_wheel):
    wheel, target = installed_wheel
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        in_wheel = {n[len("joindet/"):] for n in names if n.startswith("joindet/configs/")}
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        console = zf.read(entry_points).decode()
    expected = _checkout_configs()
    assert {"configs/mini/pretrain_synth.yaml", "configs/lazy/mini_joindet_pretrain_synth.py",
            "configs/lazy/common/train.py"} <= expected
    assert expected - in_wheel == set(), f"configs missing from the wheel: {sorted(expected - in_wheel)}"
    assert "joindet-train = joindet.engine.launcher:cli" in console
    assert (target / "bin" / "joindet-train").is_file()


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
        # the packaged configs, by name and through the demo's lookup; a LazyConfig's relative imports
        "from joindet import demo, model_zoo\n"
        "print(model_zoo.get_config_file('joindet://mini/pretrain_synth.yaml'))\n"
        "print(demo._config('mini/finetune_synth_10pct.yaml', demo.CONFIG_DIR))\n"
        "print(model_zoo.get_config('lazy/mini_joindet_pretrain_synth.py').train.max_iter)\n"
        "try:\n"
        "    model_zoo.get_config_file('mini/pretrain_synt.yaml')\n"
        "except FileNotFoundError as e:\n"
        "    print(e)\n"
    )
    run = _run_installed(target, "-c", script)
    assert run.returncode == 0, run.stdout[-4000:]
    lines = run.stdout.splitlines()
    assert lines[-5].startswith("imported")
    installed = str(target / "joindet" / "configs")
    assert lines[-4] == os.path.join(installed, "mini", "pretrain_synth.yaml")
    assert lines[-3] == os.path.join(installed, "mini", "finetune_synth_10pct.yaml")
    assert lines[-2] == "300"  # lazy/common/... imported from the install
    assert "Did you mean joindet://mini/pretrain_synth.yaml" in lines[-1] and "Available: " in lines[-1]
    demo = _run_installed(target, "-m", "joindet.demo", "--help")
    assert demo.returncode == 0, demo.stdout[-4000:]
    assert "usage:" in demo.stdout


def test_installed_train_command_pretrains_and_evaluates_packaged_configs(installed_wheel):
    """``joindet-train`` of the install, in a folder outside the checkout: a 2-iteration pretraining from
    ``joindet://mini/pretrain_synth.yaml``, then ``--eval-only`` of its weights with
    ``joindet://mini/finetune_synth_10pct.yaml`` (the demo's two configs); outputs relative to the working
    directory; a checkout's config path fails before training, naming the packaged config."""
    _, target = installed_wheel
    work = target.parent / "work"
    work.mkdir()
    train = [sys.executable, str(target / "bin" / "joindet-train")]

    def run(*args):
        return subprocess.run([*train, *args], cwd=work, env=_env(target), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)

    pretrain = run("--config-file", "joindet://mini/pretrain_synth.yaml", *TINY_PRETRAIN_OPTS, "OUTPUT_DIR", "pre")
    assert pretrain.returncode == 0, pretrain.stdout[-4000:]
    assert (work / "pre" / "model_final.pth").is_file() and (work / "pre" / "log.txt").is_file()
    assert str(target / "joindet" / "configs" / "mini" / "pretrain_synth.yaml") in pretrain.stdout

    evaluate = run("--config-file", "joindet://mini/finetune_synth_10pct.yaml", "--eval-only", *TINY_EVAL_OPTS,
                   "MODEL.WEIGHTS", "pre/model_final.pth", "OUTPUT_DIR", "eval")
    assert evaluate.returncode == 0, evaluate.stdout[-4000:]
    results = json.loads((work / "eval" / "eval_results.json").read_text())
    bbox = results["bbox"] if "bbox" in results else next(iter(results.values()))["bbox"]
    assert set(bbox) >= {"AP", "AP50", "AP75"}

    checkout_path = run("--config-file", "configs/mini/pretrain_synth.yaml")
    assert checkout_path.returncode == 2
    assert "the installed package has it as joindet://mini/pretrain_synth.yaml" in checkout_path.stdout
