"""twistd finds both plugins, from an editable and from a regular install.

Both runs use ``cwd="/"`` and no PYTHONPATH, so the project folder is not on
sys.path by accident (RECIPES.md §1: the default editable mode hides
``twisted/plugins``; shipping a ``twisted/plugins/__init__.py`` clobbers Twisted's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemons import TWISTD

PROJECT = Path(__file__).resolve().parents[2]
PLUGINS = ["dcvix-director", "dcvix-agent"]


def clean_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }


def twistd_help(twistd: str) -> str:
    result = subprocess.run(
        [twistd, "--help"],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def plugin_names(help_text: str) -> set[str]:
    """The commands under twistd's ``Commands:`` heading (4-space indented)."""
    commands = help_text.split("\nCommands:\n", 1)[1]
    return {
        line.split()[0]
        for line in commands.splitlines()
        if line.startswith("    ") and not line.startswith("     ")
    }


def test_editable_venv_twistd_lists_both_plugins() -> None:
    names = plugin_names(twistd_help(TWISTD))
    assert {"dcvix-director", "dcvix-agent"} <= names, names


# Slow: builds and installs the project into a fresh venv (about 10-20 s here).
@pytest.mark.timeout(300)
def test_regular_install_lists_both_plugins_and_keeps_twisted_intact(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    copy = tmp_path / "dcvix"
    shutil.copytree(
        PROJECT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "demo",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "dropin.cache",
            ".pytest_cache",
            ".mypy_cache",
            ".ruff_cache",
            ".hypothesis",
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(copy)],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    names = plugin_names(twistd_help(str(venv / "bin" / "twistd")))
    assert {"dcvix-director", "dcvix-agent"} <= names, names

    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import twisted.plugins, dcvix; "
            "print(twisted.plugins.__file__); print(dcvix.__file__)",
        ],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    plugins_init, dcvix_init = (Path(p) for p in where.stdout.split())
    assert plugins_init.is_relative_to(venv / "lib")
    assert plugins_init.parents[2].name == "site-packages"
    assert dcvix_init.is_relative_to(venv)  # the copy, not this checkout
    text = plugins_init.read_text()
    assert "__path__.extend(pluginPackagePaths(__name__))" in text
    assert sorted(p.name for p in plugins_init.parent.glob("dcvix_*.py")) == [
        "dcvix_agent.py",
        "dcvix_director.py",
    ]
    print(f"regular install and checks took {time.monotonic() - began:.1f} s")
