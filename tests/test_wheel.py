"""From a wheel: build it from a copy of the sources, install it into a fresh venv outside the
checkout, then `edgekit recipes`, `recipes show`, `init-config` and a 1-epoch `edgekit train
rd-lite0` on synthetic data, all run from a folder that has no recipes/.

The training run is marked slow; the rest runs by default (a few seconds). The fresh venv gets edgekit only from the wheel (``--no-deps``); its third-party dependencies
(torch, timm, onnxruntime, ...) are this venv's, reached through a ``.pth`` line, so the test
needs no network and no second multi-GB torch install. The checkout is never on its path."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[:3]}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT / "edgekit", src / "edgekit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("dist")
    # offline when this venv has setuptools (the build backend); else pip fetches it for an isolated build
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out), str(src)],
         src, dict(os.environ))
    (whl,) = out.glob("edgekit-*.whl")
    return whl


def test_wheel_ships_recipes_and_page_assets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "edgekit" / "recipes").rglob("*")
               if p.is_file() and p.suffix in (".yaml", ".json")}
    assert "edgekit/recipes/rd-lite0.yaml" in shipped and shipped <= names
    assert {"edgekit/ui/static/index.html", "edgekit/ui/static/app.js", "edgekit/ui/static/style.css"} <= names


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(venv, a work folder outside the checkout, environment) with the wheel installed."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"OMP_NUM_THREADS": "2", "PYTHONDONTWRITEBYTECODE": "1"})
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         root, env)
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).strip()
    # dependencies from this venv, after the new venv's own site-packages (so edgekit is the wheel's)
    Path(site, "_deps_from_dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return venv, work, env


def test_installed_wheel_lists_and_shows_shipped_recipes(installed: tuple[Path, Path, dict[str, str]]) -> None:
    venv, work, env = installed
    where = _run([str(venv / "bin" / "python"), "-c", "import edgekit, pathlib; print(pathlib.Path(edgekit.__file__).resolve())"],
                 work, env).strip()
    assert where.startswith(str(venv.resolve())) and not where.startswith(str(ROOT))
    edgekit = str(venv / "bin" / "edgekit")
    out = _run([edgekit, "recipes"], work, env)
    assert "rd-lite0" in out and "0.917 (30 ep)" in out and "not measured" in out
    text = _run([edgekit, "recipes", "show", "rd-lite0"], work, env)
    assert text.startswith("# Plain reverse distillation") and "name: rd-lite0" in text
    assert "type: modbus" in _run([edgekit, "recipes", "show", "usb-modbus"], work, env)
    assert "bundle:" in _run([edgekit, "init-config", "--camera", "usb", "--output", "gpiod"], work, env)
    assert not (work / "recipes").exists()


@pytest.mark.slow  # a 1-epoch rd-lite0 training at 256² (about 30 s on 2 cores, more under load)
def test_installed_wheel_trains_a_shipped_recipe_by_name(installed: tuple[Path, Path, dict[str, str]]) -> None:
    venv, work, env = installed
    edgekit = str(venv / "bin" / "edgekit")
    _run([edgekit, "data", "synth", "data", "--n-train", "16", "--n-test-good", "4", "--n-test-defect", "4",
          "--size", "128"], work, env)
    _run([edgekit, "train", "rd-lite0", "--data", "data", "--out", "run", "--epochs", "1"], work, env, timeout=900)
    used = (work / "run" / "recipe.yaml").read_text()
    assert "name: rd-lite0" in used and not (work / "recipes").exists()
