"""The wheel is what users install: build it, install it into a fresh virtual environment, and run camelid from
another directory (no repo checkout on the path), shipped configs included."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked tree: setuptools builds in place, and a build/ left in a checkout would put
    # modules deleted since then into the wheel.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    src = root / "src"
    for name in filter(None, (f.decode() for f in files)):
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest, follow_symlinks=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = (root / "dist").glob("camelid-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Dependencies come from this environment's site-packages (a plain path entry: the .pth files there, such as
    # camelid's own editable hook, are not processed), camelid itself only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, venv


def run(venv: Path, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "camelid"), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def test_wheel_ships_configs_and_runs_from_another_directory(installed, tmp_path):
    wheel, venv = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "camelid/configs/quickstart.yaml" in names and "camelid/configs/accelerate/zero3.yaml" in names
    tracked = subprocess.run(
        ["git", "ls-files", "camelid/*.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    assert sorted(n for n in names if n.endswith(".py")) == sorted(tracked)  # every module, and nothing stale
    out = run(venv, "--help", cwd=tmp_path)
    assert out.returncode == 0 and "sft" in out.stdout, out.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import camelid; print(camelid.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert str(venv) in where and str(REPO) not in where
    # a shipped recipe by its README path, from a directory that has no configs/ folder
    out = run(venv, "data", "configs/sft_lora.yaml", "data.train=[missing_file.jsonl]", cwd=tmp_path)
    assert "config file not found" not in out.stderr and "missing_file.jsonl" in out.stderr
    # a shipped recipe by name, with the prompts file shipped beside it
    assert {"camelid/recipes/zh_domain.yaml", "camelid/recipes/zh_domain_prompts.txt"} <= set(names)
    assert {"camelid/serve/ui/index.html", "camelid/serve/ui/app.js", "camelid/serve/ui/app.css"} <= set(names)
    out = run(venv, "run", "zh_domain", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0 and f"{venv}/lib/" in out.stdout and "zh_domain_prompts.txt" in out.stdout, out.stderr


@pytest.mark.slow
def test_wheel_runs_the_quickstart(installed, tmp_path):
    _, venv = installed
    out = run(
        venv, "quickstart", "train.max_steps=1", f"train.output_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=1500
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "final").is_dir()
