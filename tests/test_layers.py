"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they catch a wrong-way
import: a copy of the package with one bad import added breaks them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint_imports(package_root: Path) -> subprocess.CompletedProcess:
    """lint-imports over the foodnet found first under package_root, with the repo's contracts."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(package_root))
    return subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=package_root, env=env, capture_output=True, text=True, timeout=120)


def test_contracts_hold_for_the_package():
    result = lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, bad_import, broken", [
    ("inference/predictor.py", "import foodnet.training.module", "never imports training"),
    ("data/dataset.py", "import foodnet.models.transfer", "layers"),
    ("data/manifest.py", "import torch", "manifest reader needs no torch"),
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path, module, bad_import, broken):
    shutil.copytree(REPO / "src" / "foodnet", tmp_path / "foodnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "foodnet" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken_lines = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(broken in line for line in broken_lines), result.stdout
    # The control: the unmodified copy keeps every contract.
    target.write_text(target.read_text().replace(f"\n{bad_import}  # noqa\n", ""))
    assert lint_imports(tmp_path).returncode == 0


# Run in a subprocess: grimp finds the package by importing its name, and this process has
# already imported the checkout's foodnet.
FIND_CYCLES = """
import json, grimp
graph = grimp.build_graph("foodnet", cache_dir=None)
cycles = []
for importer in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(importer)):
        chain = graph.find_shortest_chain(importer=imported, imported=importer)
        if chain:
            cycles.append([importer, *chain])
print(json.dumps(cycles))
"""


def find_cycles(package_root: Path) -> list[list[str]]:
    """Each direct import a -> b of foodnet under package_root where b also reaches a."""
    env = dict(os.environ, PYTHONPATH=str(package_root))
    result = subprocess.run([sys.executable, "-c", FIND_CYCLES], cwd=package_root, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def test_no_import_cycles_also_inside_a_layer(tmp_path):
    assert find_cycles(REPO / "src") == []
    # The control: a cycle inside one layer (data), which the layers contract cannot see.
    shutil.copytree(REPO / "src" / "foodnet", tmp_path / "foodnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    images = tmp_path / "foodnet" / "data" / "images.py"
    images.write_text(images.read_text() + "\nimport foodnet.data.check  # noqa\n")
    cycle = ["foodnet.data.check", "foodnet.data.images", "foodnet.data.check"]
    assert cycle in find_cycles(tmp_path)
