"""The package layering of docs/ARCHITECTURE.md, checked on the source (AST only, nothing is imported).

Every project ``.py`` file (the packages, the top-level CLIs and ``bench/``; not ``tests/``) is parsed and
each project import it makes, at module level or inside a function, a class or an ``if``/``try``, is mapped
to its *unit*: the top-level package (``training.loop`` -> ``training``) or, for a file outside the
packages, the script itself (``decode.py``, ``bench/bench_decode.py``). The rules:

(a) a unit imports only its own package and units of lower layers (:data:`LAYERS`, lowest first);
(b) units that share a layer are independent: they do not import each other (``nas`` / ``sensitivity``;
    scripts: a CLI does not import another CLI, shared code lives in a package);
(c) no cycle between units, and (d) no cycle between the modules of the project (``training.checkpoint``
    <-> ``training.model_io`` was one: both halves inside one package, invisible to (a)-(c));
(e) no project import inside a ``try`` that catches its failure: a dependency is explicit, never a silent
    fallback (``nas.hooks`` once made ``ArchSearchHook`` a plain ``object`` when the trainer failed to import);
(f) a package module imports the project at module top, not inside functions (except the files of
    :data:`DEFERRED_IMPORTS`, each with its reason); scripts may defer theirs into ``main()``.

:data:`LAYERS` is the single copy of the order; docs/ARCHITECTURE.md repeats it in its ``layers`` block
and :func:`test_architecture_doc_lists_the_same_layers` keeps the two equal.
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = "<scripts>"  # every .py file outside the packages (top-level CLIs, bench/), each a unit of its own

# Lowest layer first. A tuple of several names = independent siblings (rule (b)).
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("lang",),
    ("corpus",),
    ("lfmmi",),
    ("models",),
    ("quant",),
    ("search_spaces",),
    ("training",),
    ("nas", "sensitivity"),
    ("supernet",),
    ("decoding",),
    ("lm",),
    ("runner",),
    (SCRIPTS,),
)

# Imports that break rules (a)/(b): (importing unit, imported unit) -> why it is tolerated and how to
# remove it. An entry that no longer matches any import fails the test, so the list only shrinks. Empty.
KNOWN_VIOLATIONS: Dict[Tuple[str, str], str] = {}

# Rule (f): a package module imports the project at module top. The function-level project imports that
# stay, by file, with the reason (scripts may defer theirs: see docs/ARCHITECTURE.md).
DEFERRED_IMPORTS: Dict[str, str] = {
    "decoding/cli.py": "training.checkpoint brings torch and the model code (seconds to import), which "
                       "decode.py --help and --build-graph-only never need; tests substitute that module",
}

TOP_SKIP = {"tests", "data", "exp", "docs", "configs"}  # top-level folders that hold no project code


# ------------------------------------------------------------------------------------------ collecting
def collect_sources(root: Path) -> Dict[str, str]:
    """``{relative posix path: source}`` of every project .py file under ``root`` (not tests/, .venv, data)."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == Path(root)
        dirnames[:] = sorted(d for d in dirnames if not (d.startswith(".") or d == "__pycache__"
                                                         or (top and d in TOP_SKIP)))
        for f in sorted(filenames):
            if f.endswith(".py"):
                p = Path(dirpath) / f
                out[p.relative_to(root).as_posix()] = p.read_text(encoding="utf-8")
    return out


def _packages(sources: Mapping[str, str]) -> Set[str]:
    return {path.split("/")[0] for path in sources if path.count("/") == 1 and path.endswith("/__init__.py")}


def _module_name(path: str) -> Tuple[str, bool]:
    """``a/b/c.py`` -> ``("a.b.c", False)``; ``a/b/__init__.py`` -> ``("a.b", True)``."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


class Project:
    """Module names, units and the import edges of a set of sources."""

    def __init__(self, sources: Mapping[str, str]):
        self.sources = dict(sources)
        self.packages = _packages(sources)
        self.modules: Dict[str, str] = {}       # dotted module name -> path (package files only)
        self.scripts: Dict[str, str] = {}       # top-level module name -> path (``decode`` -> decode.py)
        for path in self.sources:
            name, _ = _module_name(path)
            if path.split("/")[0] in self.packages:
                self.modules[name] = path
            elif "/" not in path:
                self.scripts[name] = path

    def unit_of_path(self, path: str) -> str:
        top = path.split("/")[0]
        return top if top in self.packages else path

    def unit_of_module(self, name: str) -> Optional[str]:
        """The unit a dotted import target belongs to; None for anything outside the project."""
        top = name.split(".")[0]
        if top in self.packages:
            return top
        if top in self.scripts:
            return self.scripts[top]
        return None

    def resolve(self, path: str, node: ast.AST) -> Iterator[Tuple[int, str]]:
        """(line, absolute dotted target) of each project module an import node loads."""
        if isinstance(node, ast.Import):
            for a in node.names:
                if self.unit_of_module(a.name):
                    yield node.lineno, a.name
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                name, is_pkg = _module_name(path)
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not self.unit_of_module(target):
                return
            for a in node.names:  # ``from training import checkpoint``: the submodule is the target
                sub = f"{target}.{a.name}"
                yield node.lineno, sub if sub in self.modules else target
            return
        # importlib.import_module("pkg.mod") / __import__("pkg") with a constant name
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if fname in ("import_module", "__import__") and self.unit_of_module(node.args[0].value):
                yield node.lineno, node.args[0].value

    def imports(self) -> Iterator[Tuple[str, int, str]]:
        """(path, line, target module) of every project import, at any depth of the syntax tree."""
        for path, src in self.sources.items():
            for node in ast.walk(ast.parse(src, filename=path)):
                for line, target in self.resolve(path, node):
                    yield path, line, target

    def deferred_imports(self) -> Iterator[Tuple[str, int, str]]:
        """(path, line, target) of the project imports inside a function body, in package modules."""
        for path, src in self.sources.items():
            if path.split("/")[0] not in self.packages:
                continue
            for node in ast.walk(ast.parse(src, filename=path)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for sub in ast.walk(node):
                        if isinstance(sub, (ast.Import, ast.ImportFrom)):
                            for line, target in self.resolve(path, sub):
                                yield path, line, target

    def guarded_imports(self) -> Iterator[Tuple[str, int, str]]:
        """(path, line, target) of the project imports in the body of a ``try`` that has handlers."""
        for path, src in self.sources.items():
            for node in ast.walk(ast.parse(src, filename=path)):
                if isinstance(node, ast.Try) and node.handlers:
                    for stmt in node.body:
                        for sub in ast.walk(stmt):
                            for line, target in self.resolve(path, sub):
                                yield path, line, target


# ------------------------------------------------------------------------------------------ checking
def _layer_index(layers: Sequence[Sequence[str]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for i, layer in enumerate(layers):
        for name in layer:
            assert name not in out, f"{name} appears twice in the layer order"
            out[name] = i
    return out


def _cycles(graph: Mapping[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def check(sources: Mapping[str, str], layers: Sequence[Sequence[str]] = LAYERS,
          allowed: Mapping[Tuple[str, str], str] = KNOWN_VIOLATIONS,
          deferred: Mapping[str, str] = DEFERRED_IMPORTS) -> List[str]:
    """Every breach of rules (a)-(f) in ``sources`` (``{relative path: source}``), one line each; [] = clean.

    An import between units listed in ``allowed`` is tolerated (rules (a)/(b) only); a file in ``deferred``
    may import the project inside functions (rule (f)); an entry of either matching no import is reported
    too."""
    proj = Project(sources)
    layer = _layer_index(layers)
    problems: List[str] = []
    for pkg in sorted(proj.packages):
        if pkg not in layer:
            problems.append(f"package {pkg}/ is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")

    def layer_of(unit: str) -> int:
        return layer[unit] if unit in layer else layer.get(SCRIPTS, len(layers))

    unit_edges: Dict[str, Set[str]] = {}
    module_edges: Dict[str, Set[str]] = {}
    used_allowed: Set[Tuple[str, str]] = set()
    for path, line, target in sorted(set(proj.imports())):  # one line per statement and target
        src, dst = proj.unit_of_path(path), proj.unit_of_module(target)
        assert dst is not None
        name, _ = _module_name(path)
        if target != name:
            module_edges.setdefault(name, set()).add(target)
        if src == dst:
            continue
        unit_edges.setdefault(src, set()).add(dst)
        where = f"{path}:{line}: imports {target}"
        if (src, dst) in allowed:
            used_allowed.add((src, dst))
            continue
        if layer_of(dst) > layer_of(src):
            problems.append(f"{where}: {dst} is in a higher layer than {src} (layer {layer_of(dst)} > "
                            f"{layer_of(src)})")
        elif layer_of(dst) == layer_of(src):
            problems.append(f"{where}: {src} and {dst} share a layer and must not import each other")
    for path, line, target in sorted(set(proj.guarded_imports())):
        problems.append(f"{path}:{line}: imports {target} inside try/except: import it plainly (a missing "
                        f"project module is a bug to report, not a case to fall back from)")
    used_deferred: Set[str] = set()
    for path, line, target in sorted(set(proj.deferred_imports())):
        if path in deferred:
            used_deferred.add(path)
            continue
        problems.append(f"{path}:{line}: imports {target} inside a function: import it at module top (a "
                        f"package's dependencies are visible in its header)")
    for path in sorted(set(deferred) - used_deferred):
        problems.append(f"{path} no longer imports the project inside a function: delete it from "
                        f"DEFERRED_IMPORTS")
    for cyc in _cycles(unit_edges):
        problems.append(f"cycle between units: {' <-> '.join(cyc)}")
    for cyc in _cycles(module_edges):
        problems.append(f"cycle between modules: {' <-> '.join(cyc)}")
    for key in sorted(set(allowed) - used_allowed):
        problems.append(f"known violation {key} no longer occurs: delete it from KNOWN_VIOLATIONS")
    return problems


# ------------------------------------------------------------------------------------------ the tests
def test_the_project_keeps_its_layers():
    problems = check(collect_sources(ROOT))
    assert not problems, "layering broken (docs/ARCHITECTURE.md):\n" + "\n".join(problems)


def test_every_package_has_a_layer_and_every_layer_a_package():
    packages = _packages(collect_sources(ROOT))
    named = {n for layer in LAYERS for n in layer} - {SCRIPTS}
    assert named == packages


def test_architecture_doc_lists_the_same_layers():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    m = re.search(r"```text\n# layers, lowest first\n(.*?)```", text, re.S)
    assert m, "docs/ARCHITECTURE.md has no '# layers, lowest first' block"
    doc = [tuple(x.strip() for x in line.split("|")) for line in m.group(1).splitlines() if line.strip()]
    assert doc == [tuple(layer) for layer in LAYERS]


def _tree(**files: str) -> Dict[str, str]:
    """Sources for a synthetic project: every package gets an empty ``__init__.py``."""
    out = {k.replace("__", "/") + ".py": v for k, v in files.items()}
    for path in list(out):
        if "/" in path:
            out.setdefault(path.split("/")[0] + "/__init__.py", "")
    return out


def test_the_checker_catches_a_silent_fallback_import():
    src = _tree(nas__hooks="try:\n    from training.loop import TrainHook as _Base\nexcept Exception:\n"
                           "    _Base = object\n", training__loop="",
                lfmmi__k2="def f():\n    try:\n        import k2\n    except ImportError:\n        return None\n")
    assert check(src, allowed={}, deferred={}) == [
        "nas/hooks.py:2: imports training.loop inside try/except: import it plainly (a missing project module "
        "is a bug to report, not a case to fall back from)"]


def test_a_clean_synthetic_project_passes():
    src = _tree(models__tdnnf="from models import quantizers\nimport torch\n", models__quantizers="",
                quant__packing="from models.tdnnf import TDNNF\nfrom .cost_model import size\n",
                quant__cost_model="", training__loop="import quant.packing\n",
                decode="from training.loop import Trainer\nimport numpy\n")
    assert check(src, allowed={}, deferred={}) == []


@pytest.mark.parametrize("where", ["module", "function"])
def test_the_checker_catches_an_upward_import_and_the_cycle_it_makes(where):
    bad = "import training\n" if where == "module" else "def f():\n    import training\n"
    src = _tree(models__tdnnf=bad, training__loop="from models.tdnnf import TDNNF\n")
    problems = check(src, allowed={}, deferred={})
    assert any(p.startswith("models/tdnnf.py:") and "training is in a higher layer than models" in p
               for p in problems), problems
    assert "cycle between units: models <-> training" in problems


def test_the_checker_catches_siblings_scripts_relative_imports_and_module_cycles():
    src = _tree(nas__derive="from sensitivity.allocate import knapsack\n", sensitivity__allocate="",
                rescore="import decode\n", decode="",
                training__checkpoint="def load():\n    from .model_io import load_model_file\n",
                training__model_io="from training import checkpoint as ckpt\n")
    problems = check(src, allowed={}, deferred={})
    assert any("nas/derive.py:1: imports sensitivity.allocate: nas and sensitivity share a layer" in p
               for p in problems), problems
    assert any("rescore.py:1: imports decode: rescore.py and decode.py share a layer" in p for p in problems)
    assert "cycle between modules: training.checkpoint <-> training.model_io" in problems


def test_the_checker_reads_a_tree_and_flags_unplaced_packages_and_stale_exceptions(tmp_path):
    (tmp_path / "newpkg").mkdir()
    (tmp_path / "newpkg" / "__init__.py").write_text("import lm\n")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "__init__.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import newpkg\n")
    sources = collect_sources(tmp_path)
    assert set(sources) == {"newpkg/__init__.py", "lm/__init__.py"}
    problems = check(sources, allowed={("a.py", "b.py"): "gone"})
    assert "package newpkg/ is in no layer: add it to LAYERS and docs/ARCHITECTURE.md" in problems
    assert any("no longer occurs" in p for p in problems)


def test_the_checker_catches_a_deferred_package_import_and_allows_a_script_one():
    src = _tree(lm__score="def load(p):\n    from lm.quant import load_packed_lm\n    return p\n", lm__quant="",
                train_lm="def main():\n    from lm.score import load\n")
    assert check(src, allowed={}, deferred={}) == [
        "lm/score.py:2: imports lm.quant inside a function: import it at module top (a package's "
        "dependencies are visible in its header)"]
    assert check(src, allowed={}, deferred={"lm/score.py": "a reason"}) == []
    assert check(src, allowed={}, deferred={"lm/other.py": "a reason"})[-1] == (
        "lm/other.py no longer imports the project inside a function: delete it from DEFERRED_IMPORTS")
