"""Every import in the package points down the layers of the design (README, "Layout").

The source files are parsed, not imported: ``import`` and ``from ... import`` anywhere in a module (top
level, inside functions, under ``TYPE_CHECKING``), relative imports, ``importlib.import_module("...")``
calls, and string constants that name an adsrt module (the backend registry's lazy entries) all count.
A module may import its own layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11+ or tomli")

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module's layer is the first prefix of its dotted name found here; the plain top-level
# modules of ``adsrt`` not listed are core.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("adsrt.errors", "adsrt.fileio", "adsrt.imageio", "adsrt.metrics", "adsrt.ads", "adsrt.bundle",
              "adsrt.arch")),
    ("kernels", ("adsrt.kernels",)),
    ("runtime", ("adsrt.runtime",)),
    ("io", ("adsrt.io",)),
    ("export", ("adsrt.export",)),
    ("train", ("adsrt.train",)),
    ("bench", ("adsrt.bench",)),
    ("facade", ("adsrt",)),  # adsrt/__init__.py: the public names (load, Restorer, __version__), lazily
    ("cli", ("adsrt.cli", "adsrt.__main__")),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def package_dirs() -> dict[str, Path]:
    """Import package -> source folder, from pyproject's setuptools ``package-dir``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder for pkg, folder in config["tool"]["setuptools"]["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file."""
    out: dict[str, Path] = {}
    for pkg, folder in package_dirs().items():
        for path in folder.glob("*.py"):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            out[name] = path
    return out


def layer_of(module: str) -> str:
    best = ""
    layer = "core"
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, name
    if best == "adsrt" and module != "adsrt":
        return "core"  # a plain adsrt.<module> that no layer claims (there is none today)
    return layer


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return (f"{where}:{self.line}: {self.source} ({layer_of(self.source)}) imports "
                f"{self.target} ({layer_of(self.target)})")


def _resolve(known: set[str], name: str) -> str | None:
    """The adsrt module ``name`` refers to (``adsrt.x.y`` may be the attribute ``y`` of module ``adsrt.x``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> list[Edge]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    named: list[tuple[str, int]] = []  # strings: only an exact module name counts ("adsrt.mode" is a key)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # ``from adsrt import x`` imports module adsrt.x when there is one, else the package adsrt
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith("adsrt.") and text.replace(".", "").replace("_", "").isalnum():
                named.append((text, node.lineno))  # a module named by string: importlib, registries
    edges = []
    targets = [(_resolve(known, n) if n.startswith("adsrt") else None, line) for n, line in found]
    targets += [(n if n in known else None, line) for n, line in named]
    for target, line in targets:
        if target is not None and target != module:
            edges.append(Edge(module, target, path, line))
    return edges


def all_edges() -> list[Edge]:
    mods = modules()
    known = set(mods)
    return [edge for module, path in sorted(mods.items()) for edge in imports_of(module, path, known)]


def upward(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if RANK[layer_of(e.target)] > RANK[layer_of(e.source)]]


def test_every_module_has_a_layer_and_the_scan_sees_imports():
    mods = modules()
    assert len(mods) > 60, "the scan found too few modules: is package-dir in pyproject.toml read?"
    assert layer_of("adsrt.arch.nafnet") == "core" and layer_of("adsrt.runtime.restorer") == "runtime"
    assert layer_of("adsrt") == "facade" and layer_of("adsrt.cli.train") == "cli"
    edges = all_edges()
    assert len(edges) > 200
    # one known downward edge of each kind the scan must see: top level, inside a function, by string
    seen = {(e.source, e.target) for e in edges}
    assert ("adsrt.runtime.restorer", "adsrt.bundle") in seen
    assert ("adsrt.runtime.backends", "adsrt.runtime.onnxruntime_backend") in seen  # registry string


def test_no_import_points_up():
    bad = upward(all_edges())
    assert not bad, "imports against the layer order (core < kernels < runtime < io < export < train < bench " \
                    "< facade < cli):\n" + "\n".join(map(str, bad))


@pytest.mark.parametrize("source, snippet, target", [
    ("adsrt.runtime.restorer", "from adsrt.train.data import to_tensor\n", "adsrt.train.data"),
    ("adsrt.kernels.ads_update", "def f():\n    import adsrt.runtime.backends\n", "adsrt.runtime.backends"),
    ("adsrt.arch.nafnet", "from adsrt.export import onnx_export\n", "adsrt.export.onnx_export"),
    ("adsrt.runtime.backends", "X = {'a': 'adsrt.cli.runtime'}\n", "adsrt.cli.runtime"),
    ("adsrt.runtime.loop", "from ..io import sources\n", "adsrt.io.sources"),
])
def test_an_added_upward_import_is_caught(tmp_path, source, snippet, target):
    """The check fails, naming file and line, when one upward import is added to a module."""
    mods = modules()
    path = tmp_path / mods[source].name
    path.write_text(mods[source].read_text() + "\n" + snippet)
    edges = imports_of(source, path, set(mods))
    bad = [e for e in upward(edges) if e.target == target]
    assert len(bad) == 1 and bad[0].line > len(mods[source].read_text().splitlines())
    assert source in str(bad[0]) and target in str(bad[0])


def test_the_runtime_reaches_the_exporter_only_through_its_entry_point():
    """The one door (adsrt.runtime.artifacts) is an entry point, and it names the exporter's provider."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    points = config["project"]["entry-points"]["adsrt.artifacts"]
    assert points == {"export": "adsrt.export.artifacts:provide"}
    assert layer_of(points["export"].split(":")[0]) == "export"
