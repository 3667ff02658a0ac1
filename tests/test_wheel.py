"""The installed package is what users run: a built wheel carries every module and the
default templates from the top-level `templates/` folder, and renders with them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("jobserv_bridge-*.whl")
    return built


def test_every_package_of_bridge_is_listed_for_setuptools() -> None:
    folders = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for init in (REPO_ROOT / "bridge").rglob("__init__.py")
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert folders <= listed, f"add to [tool.setuptools] packages: {sorted(folders - listed)}"


def test_the_wheel_carries_the_top_level_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (REPO_ROOT / "templates").rglob("*"):
        if template.is_file() and "__pycache__" not in template.parts:
            installed = (
                "bridge/templates/" + template.relative_to(REPO_ROOT / "templates").as_posix()
            )
            assert installed in names
    sources = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "bridge").rglob("*.py")}
    assert sources <= names


def test_an_installed_wheel_renders_with_its_own_templates(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The checkout is not on the path: only the unpacked wheel provides `bridge`.
    script = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import bridge.render\n"
        "from bridge.render import default_template\n"
        "assert bridge.render.__file__.startswith(sys.argv[1]), bridge.render.__file__\n"
        "for name in ('slack.j2', 'console.j2'):\n"
        "    default_template(name, 'text')\n"
        "import bridge.admin\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, str(site)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
