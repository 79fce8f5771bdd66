"""The package's layout: the runtime apart from the test harness, and no import cycle.

- The egg ``crawlproj deploy`` builds holds crawlproj and nothing of crawlproj_testing; each of
  its modules imports on a Python like a scrapyd machine's (the node's dependencies, the egg,
  neither the checkout nor the extras) without loading a harness module.
- Production settings (crawlproj.settings, its add-ons applied) name no harness component.
- The import graph of crawlproj/ (read with ast) has no cycle, and crawlproj names
  crawlproj_testing only where ALLOWED_HARNESS_REFERENCES says.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from conftest import ROOT, machine_python

HARNESS = "crawlproj_testing"
RUNTIME = "crawlproj"
BUILD_TIMEOUT = 180
PROBE_TIMEOUT = 300

#: Where crawlproj may name the test harness: (module, function or constant, why). An import of
#: crawlproj_testing anywhere else (module level, in a function, under TYPE_CHECKING) or a string
#: naming one of its modules fails the test.
ALLOWED_HARNESS_REFERENCES = {
    ("crawlproj.tools.cluster", "demo"): "`crawlproj demo` serves the synthetic web (a lazy import)",
    ("crawlproj.tools.runner", "SYNTHWEB_ADDON"): "the add-on's path for crawls of the synthetic web",
    ("crawlproj.tools.cli", "SERVICES"): "`crawlproj synthweb`, imported by name when it is run",
}

#: Import cycles tolerated, each the set of modules of one strongly connected component: none.
#: A cycle found must lie within one of them; an entry that matches no cycle any more must be
#: deleted (the test says so).
KNOWN_CYCLES: list[frozenset[str]] = []


# -- the egg --------------------------------------------------------------------------------------

# Run in the scrapyd-like Python with the egg first on sys.path: each module is imported in a
# child forked from an interpreter that has imported no module of the project, so every module
# imports on its own. The extras' packages and the harness are blocked, so importing one fails
# with its name instead of passing because the test venv happens to have it. The parent first
# imports the third-party modules the runtime loads (found by a child that imports every module),
# so that each child imports only the project's modules: a fork costs milliseconds, not the
# second or so that importing Scrapy and Twisted again takes.
PROBE = r"""
import importlib, importlib.abc, json, os, sys
egg, blocked, modules = sys.argv[1], set(json.loads(sys.argv[2])), json.loads(sys.argv[3])
sys.path.insert(0, egg)
OURS = ("crawlproj", HARNESS)

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not installed on a scrapyd node (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())

def in_child(work):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            report = work()
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data or b'{"error": "no report"}')

def import_all():
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException:
            pass  # its own child reports it
    return {"third_party": [m for m in list(sys.modules) if m.partition(".")[0] not in OURS]}

for name in in_child(import_all).get("third_party", []):
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # a module that imports only inside another's import: loaded with it, or by the child
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in OURS)
if loaded:
    sys.exit(f"the third-party modules loaded the project's: {loaded}")

def import_one(module):
    importlib.import_module(module)
    return {"harness": sorted(m for m in sys.modules if m.partition(".")[0] == HARNESS),
            "outside": sorted(m for m, mod in list(sys.modules.items())
                              if m.partition(".")[0] == "crawlproj"
                              and not (getattr(mod, "__file__", None) or egg).startswith(egg))}

print(json.dumps({module: in_child(lambda: import_one(module)) for module in modules}))
""".replace("HARNESS", repr(HARNESS))


def build_egg(out: Path) -> Path:
    """The egg, built by the operator's command (``crawlproj deploy --build-egg``)."""
    proc = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", "deploy", "--build-egg", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"crawlproj deploy --build-egg: exit {proc.returncode}\n{proc.stderr}"
    return out


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def extras_top_level() -> set[str]:
    """Import names of the distributions that only pyproject.toml's extras bring in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {req.split("==")[0].split("[")[0].strip().lower().replace("_", "-")
             for reqs in project["optional-dependencies"].values() for req in reqs}
    names.discard(RUNTIME)
    base = {req.split("==")[0].split("[")[0].strip().lower().replace("_", "-") for req in project["dependencies"]}
    assert not names & base, f"in the base dependencies and an extra: {sorted(names & base)}"
    found = set()
    for top, dists in metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in names for d in dists):
            found.add(top)
    assert {"matplotlib", "scrapyd_client", "pytest"} <= found, found  # the extras are installed here
    return found


def test_egg_holds_the_runtime_only_and_each_module_imports_without_the_harness(tmp_path: Path) -> None:
    egg = build_egg(tmp_path / "crawlproj.egg")
    with zipfile.ZipFile(egg) as z:
        files = z.namelist()
    sources = sorted(f for f in files if f.endswith(".py"))
    packages = {f.split("/")[0] for f in files if "/" in f} - {"EGG-INFO"}
    assert packages == {RUNTIME}, f"the egg holds more than crawlproj: {sorted(packages)}"
    assert not [f for f in files if f.startswith(HARNESS)]
    modules = [module_name(f) for f in sources]
    checkout = sorted(module_name(str(p.relative_to(ROOT))) for p in (ROOT / RUNTIME).rglob("*.py"))
    assert sorted(modules) == checkout, "the egg's modules differ from the checkout's crawlproj/"
    # __main__ modules run their program when imported (`python -m`): their package is imported
    importable = [m for m in modules if not m.endswith(".__main__")]

    python = machine_python(tmp_path / "venv")
    blocked = sorted(extras_top_level() | {HARNESS})
    proc = subprocess.run([str(python), "-c", PROBE, str(egg), json.dumps(blocked), json.dumps(importable)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert sorted(results) == sorted(importable)
    problems = {m: r for m, r in results.items() if r.get("error") or r.get("harness") or r.get("outside")}
    assert not problems, "egg modules that fail on a scrapyd node or load the harness:\n" + "\n".join(
        f"  {m}: {r}" for m, r in sorted(problems.items()))


# -- production settings ----------------------------------------------------------------------------


def strings(value: Any) -> Iterator[str]:
    """Every string in ``value``: dict keys and values, list items, recursively."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from strings(item)
    elif hasattr(value, "copy_to_dict"):  # a BaseSettings value (component dicts)
        yield from strings(value.copy_to_dict())
    elif isinstance(value, type) or callable(value):
        yield f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"


def test_production_settings_name_no_test_component() -> None:
    import crawlproj.settings as module
    from scrapy.utils.test import get_crawler

    from crawlproj.spiders.broad import BroadSpider

    raw = {name: getattr(module, name) for name in dir(module) if name.isupper()}
    named = sorted({f"{name}: {s}" for name, value in raw.items() for s in strings(value) if HARNESS in s})
    assert not named, f"crawlproj/settings.py names the test harness: {named}"
    # ... and neither do the settings its ADDONS leave behind (update_pre_crawler_settings and
    # update_settings applied, as `scrapy crawl` does)
    crawler = get_crawler(BroadSpider, settings_dict=raw)
    crawler._apply_settings()
    applied = crawler.settings.copy_to_dict()
    named = sorted({f"{name}: {s}" for name, value in applied.items() for s in strings(value) if HARNESS in s})
    assert not named, f"the project's settings with its add-ons applied name the test harness: {named}"
    assert not any(name.startswith("SYNTHWEB_") for name in applied)


# -- the import graph -------------------------------------------------------------------------------


def runtime_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module of crawlproj/."""
    found = {}
    for path in sorted((ROOT / RUNTIME).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        found[module_name(rel)] = (path, rel.endswith("__init__.py"))
    return found


def _owner(tree: ast.Module) -> dict[ast.AST, str]:
    """Each import node -> the top-level function, class or constant it belongs to ("" = module)."""
    owner: dict[ast.AST, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = stmt.name
        elif isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name = stmt.target.id
        else:
            name = ""
        for node in ast.walk(stmt):
            owner[node] = name
    return owner


def imports(name: str, path: Path, is_package: bool, modules: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement of a module, wherever it is: at
    module level, in a function, under ``if TYPE_CHECKING`` (all count: a circle hidden in a
    function or in annotations is still a circle between the modules). Relative imports are
    resolved; ``from pkg import name`` imports ``pkg.name`` if that is a module, else ``pkg``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), node.lineno


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Edges between crawlproj modules; (importer, imported) -> line of the import."""
    modules = runtime_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for name, (path, is_package) in modules.items():
        for target, line in imports(name, path, is_package, set(modules)):
            # importing a.b.c runs the __init__ of a.b too, unless the importer is inside a.b
            chain = [target] + [target.rsplit(".", i)[0] for i in range(1, target.count("."))]
            for dep in chain:
                if dep in modules and dep != name and not name.startswith(dep + "."):
                    graph[name].add(dep)
                    lines.setdefault((name, dep), line)
    return graph, lines


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, set[str]], lines: dict[tuple[str, str], int]) -> str:
    members = set(component)
    return "\n".join(f"    {a} -> {b} (line {lines[a, b]})"
                     for a in component for b in sorted(graph[a] & members))


def test_graph_reader_resolves_relative_from_and_package_imports() -> None:
    graph, _ = import_graph()
    # dispatcher/__init__.py: `from .errors import ...`
    assert "crawlproj.dispatcher.errors" in graph["crawlproj.dispatcher"]
    # politeness/gate.py: `from .core import Politeness`, `from .config import ...`
    assert {"crawlproj.politeness.core", "crawlproj.politeness.config"} <= graph["crawlproj.politeness.gate"]
    # cli.py: `from crawlproj.tools import cluster, deploy` names modules, not the package
    assert {"crawlproj.tools.cluster", "crawlproj.tools.deploy"} <= graph["crawlproj.tools.cli"]
    # a module outside crawlproj.politeness importing one of its modules runs its __init__
    importers = [m for m, deps in graph.items() if "crawlproj.politeness.robots" in deps
                 and not m.startswith("crawlproj.politeness")]
    assert importers and all("crawlproj.politeness" in graph[m] for m in importers)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_crawlproj() -> None:
    graph, lines = import_graph()
    found = cycles(graph)
    new = [c for c in found if not any(set(c) <= known for known in KNOWN_CYCLES)]
    assert not new, "import cycles in crawlproj/:\n" + "\n\n".join(describe(c, graph, lines) for c in new)
    stale = [sorted(k) for k in KNOWN_CYCLES if not any(set(c) <= k for c in found)]
    assert not stale, f"KNOWN_CYCLES lists cycles that are gone; delete them: {stale}"


def test_crawlproj_names_the_harness_only_where_allowed() -> None:
    found: dict[tuple[str, str], str] = {}
    for name, (path, _is_package) in runtime_modules().items():
        tree = ast.parse(path.read_text(), str(path))
        owner = _owner(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""] if not node.level else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                # a dotted path in a string (importlib, settings): docstrings and prose do not match
                targets = [node.value] if node.value.replace("_", "").replace(".", "").isalnum() else []
            else:
                continue
            for target in targets:
                if target == HARNESS or target.startswith(HARNESS + "."):
                    where = owner.get(node, "")
                    found[(name, where or "<module level>")] = f"line {node.lineno}: {target}"  # type: ignore[attr-defined]
    unexpected = {k: v for k, v in found.items() if k not in ALLOWED_HARNESS_REFERENCES}
    assert not unexpected, "crawlproj names crawlproj_testing outside ALLOWED_HARNESS_REFERENCES:\n" + "\n".join(
        f"  {m} ({where}) {what}" for (m, where), what in sorted(unexpected.items()))
    unused = sorted(set(ALLOWED_HARNESS_REFERENCES) - set(found))
    assert not unused, f"ALLOWED_HARNESS_REFERENCES entries that match nothing any more; delete them: {unused}"
