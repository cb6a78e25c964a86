"""Layering checks read from the code's own imports.

The layers are: ``launcher.core`` (torch-free basics) <- ``data`` <- ``trainers`` <- the rest of
``launcher`` and ``hydra_plugins``. A lower layer importing a higher one drags heavy backends into
light entry points and makes the refactor undoable, so these tests check it statically (every
import, wherever it sits) and dynamically (what importing ``launcher.core`` actually loads).
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("launcher", "trainers", "data", "hydra_plugins")

# (layer prefix, human-readable rule, prefixes that layer may import). First match wins, so the
# narrower launcher.core rule never shadows another; launcher outside core is unrestricted.
RULES = (
    ("data", "data may import only data* and launcher.core*", ("data", "launcher.core")),
    ("trainers", "trainers may import only trainers*, data* and launcher.core*",
     ("trainers", "data", "launcher.core")),
    ("launcher.core", "launcher.core may import only launcher.core*", ("launcher.core",)),
)

HEAVY = ("torch", "mace", "fairchem", "e3nn")
REPORTED = HEAVY + ("hydra", "submitit", "matplotlib")


def _under(name: str, prefix: str) -> bool:
    """Dotted-prefix match: 'launcher.core' covers 'launcher.core.x' but not 'launcher.corex'."""
    return name == prefix or name.startswith(prefix + ".")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Every .py file under the project packages, keyed by dotted name."""
    root = Path(root)
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            found[_module_name(path, root)] = path
    return found


def _is_project(name: str, modules: dict[str, Path]) -> bool:
    """A project module, or a package prefix of one (e.g. a namespace package)."""
    return name in modules or any(_under(m, name) for m in modules)


def collect_imports(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Map each project module to the project modules it imports, as (target, line number).

    Uses ast.walk so function-level, try/if and TYPE_CHECKING imports all count: any of them can
    pull a heavy layer in at run time or form a cycle.
    """
    modules = project_modules(root)
    result: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        found: list[tuple[str, int]] = []
        for node in ast.walk(tree):
            candidates: list[str] = []
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".") if package else []
                    keep = len(parts) - (node.level - 1)
                    if keep <= 0:
                        continue  # relative import escaping the project; nothing to check
                    base = ".".join(parts[:keep])
                    if node.module:
                        base = f"{base}.{node.module}"
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    candidates.append(sub if alias.name != "*" and sub in modules else base)
            for target in candidates:
                if target and _is_project(target, modules):
                    found.append((target, node.lineno))
        result[name] = sorted(set(found), key=lambda t: (t[1], t[0]))
    return result


def _rule_for(module: str):
    for prefix, text, allowed in RULES:
        if _under(module, prefix):
            return text, allowed
    return None


def layer_violations(imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    """One-line messages for every import that reaches above its importer's layer."""
    out: list[str] = []
    for importer in sorted(imports):
        rule = _rule_for(importer)
        if rule is None:
            continue
        text, allowed = rule
        for target, line in imports[importer]:
            if not any(_under(target, p) for p in allowed):
                out.append(f"{importer}:{line} imports {target} (rule: {text})")
    return out


def find_cycles(imports: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of the import graph with >1 module, plus self-imports.

    Iterative Tarjan so deep import chains cannot hit the recursion limit. Only explicit imports
    are edges; the implicit parent-package import Python performs is not added.
    """
    graph: dict[str, list[str]] = {m: sorted({t for t, _ in ts}) for m, ts in imports.items()}
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, [])

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1 or node in graph[node]:
                    sccs.append(sorted(comp))
    return sorted(sccs)


# --- the real tree -------------------------------------------------------------------------------


def test_layer_rules_hold():
    """Lower layers must not import higher ones, or light entry points pull in backends."""
    violations = layer_violations(collect_imports(REPO))
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_no_import_cycles():
    """Import cycles make the layering meaningless and import order fragile."""
    cycles = find_cycles(collect_imports(REPO))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_core_imports_no_torch_or_backends():
    """Importing launcher.core must stay cheap: no torch, backends, trainers or data at all."""
    core = REPO / "launcher" / "core"
    if not core.is_dir():
        pytest.fail(f"launcher/core does not exist yet ({core}); the layering refactor is incomplete")
    names = sorted(n for n in project_modules(REPO) if _under(n, "launcher.core"))
    if not names:
        pytest.fail(f"launcher/core ({core}) holds no modules")
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        f"watch = {REPORTED!r}\n"
        "for m in sorted(sys.modules):\n"
        "    top = m.split('.')[0]\n"
        "    if m in watch or top in ('trainers', 'data'):\n"
        "        print(m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"importing launcher.core modules failed:\n{proc.stderr}"
    loaded = proc.stdout.split()
    bad = [m for m in loaded if m in HEAVY or m.split(".")[0] in ("trainers", "data")]
    assert not bad, f"importing launcher.core loaded {bad} (all watched modules loaded: {loaded})"


# --- the checker itself --------------------------------------------------------------------------


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checker_catches_violations(tmp_path):
    """A checker that never fails proves nothing: feed it a tree with known faults."""
    _write(tmp_path, "data/__init__.py", "import launcher.core.k\n")  # allowed
    _write(tmp_path, "data/a.py", "import os\n\n\ndef f():\n    from launcher.cli import x\n    return x\n")
    _write(tmp_path, "launcher/__init__.py")
    _write(tmp_path, "launcher/cli.py", "x = 1\n")
    _write(tmp_path, "launcher/corex.py", "")
    _write(tmp_path, "launcher/core/__init__.py", "from . import k\n")  # allowed, relative
    _write(tmp_path, "launcher/core/k.py", "import trainers.t\n")
    _write(tmp_path, "trainers/__init__.py")
    _write(tmp_path, "trainers/t.py", "from . import u\n")
    _write(
        tmp_path, "trainers/u.py",
        "from typing import TYPE_CHECKING\nfrom trainers import t\n"
        "if TYPE_CHECKING:\n    from data import a\n",
    )

    imports = collect_imports(tmp_path)
    assert ("trainers.u", 1) in imports["trainers.t"]  # relative import resolved
    assert ("launcher.cli", 5) in imports["data.a"]  # function-level import seen
    assert ("data.a", 4) in imports["trainers.u"]  # TYPE_CHECKING import seen

    violations = layer_violations(imports)
    assert len(violations) == 2, violations
    assert violations[0].startswith("data.a:5 imports launcher.cli ")
    assert violations[1].startswith("launcher.core.k:1 imports trainers.t ")
    assert all("\n" not in v for v in violations)

    assert find_cycles(imports) == [["trainers.t", "trainers.u"]]

    # Dotted-prefix matching: 'launcher.corex' is not core, and the bare package is not allowed.
    fake = {"data.b": [("launcher.corex", 1), ("launcher", 2), ("launcher.core", 3)]}
    assert [v.split(" (")[0] for v in layer_violations(fake)] == [
        "data.b:1 imports launcher.corex", "data.b:2 imports launcher",
    ]
    assert find_cycles({"a": [("a", 1)]}) == [["a"]]


def unresolved_imports(root: Path, folders: tuple = PACKAGES + ("tests",)) -> list[str]:
    """Absolute imports of a project package that name no existing module or package attribute.

    The layer and cycle checks only see imports that resolve; a stale path left behind by a move
    (``from launcher import signals`` after ``signals`` moved) would otherwise go unnoticed.
    """
    modules = project_modules(root)

    def top_level_names(module: str) -> set:
        tree = ast.parse(modules[module].read_text(encoding="utf-8"))
        names = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        return names

    problems = []
    files = [p for f in folders for p in sorted((root / f).rglob("*.py")) if "__pycache__" not in p.parts]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                targets = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in targets:
                if module.split(".")[0] not in PACKAGES:
                    continue
                if module.startswith("hydra_plugins.") and not _is_project(".".join(module.split(".")[:2]), modules):
                    continue  # another distribution's plugin in Hydra's shared namespace package
                if module not in modules:
                    problems.append(f"{rel}:{node.lineno} imports {module}, which does not exist")
                elif name not in (None, "*") and f"{module}.{name}" not in modules \
                        and name not in top_level_names(module):
                    problems.append(f"{rel}:{node.lineno} imports {name} from {module}, which defines no such name")
    return problems


def test_every_project_import_resolves():
    problems = unresolved_imports(REPO)
    assert not problems, "\n".join(problems)


def test_unresolved_import_is_caught(tmp_path):
    _write(tmp_path, "launcher/__init__.py")
    _write(tmp_path, "launcher/core/__init__.py")
    _write(tmp_path, "launcher/core/errors.py", "class ConfigError(Exception):\n    pass\n")
    _write(tmp_path, "data/__init__.py")
    _write(tmp_path, "data/a.py", "from launcher import signals\nfrom launcher.errors import ConfigError\n"
                                  "from launcher.core.errors import ConfigError, Missing\n")
    assert unresolved_imports(tmp_path, folders=("launcher", "data")) == [
        "data/a.py:1 imports signals from launcher, which defines no such name",
        "data/a.py:2 imports launcher.errors, which does not exist",
        "data/a.py:3 imports Missing from launcher.core.errors, which defines no such name",
    ]


# --- the kernel and the doors name no backend ------------------------------------------------------

DOORS = ("launcher", "hydra_plugins")
# What Hydra's plugin scan imports at start-up (docs/architecture.md): modules whose name starts with "_" are
# imported only when used, and imports inside functions only when called.
PLUGIN_START_UP_IMPORTS = ("launcher.params", "launcher.core.plugins")


def _doc_strings(tree: ast.AST) -> set:
    """ids of the string nodes that are documentation: docstrings and the ``doc`` of schema fields (``_f``)."""
    docs: set = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docs.add(id(first.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_f":
            doc_args = node.args[1:2] + [k.value for k in node.keywords if k.arg == "doc"]
            docs.update(id(c) for a in doc_args for c in ast.walk(a))
    return docs


def _code_texts(tree: ast.AST):
    """(line, text) of every identifier, imported module and non-documentation string of ``tree``."""
    docs = _doc_strings(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield line, node.value
        elif isinstance(node, ast.Name):
            yield line, node.id
        elif isinstance(node, ast.Attribute):
            yield line, node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield line, node.name
        elif isinstance(node, ast.alias):
            yield line, node.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield line, node.module
        elif isinstance(node, (ast.arg, ast.keyword)) and node.arg:
            yield line, node.arg


def backend_mentions(root: Path, names, folders=DOORS) -> list[str]:
    """``file:line names NAME`` wherever code (not documentation) under ``folders`` names one of ``names``
    (registered backend names, or the packages they live in) as a whole word (``_``, ``.`` and ``-`` separate)."""
    patterns = {n: re.compile(rf"(?<![A-Za-z0-9]){re.escape(n)}(?![A-Za-z0-9])") for n in names}
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, text in _code_texts(tree):
                found += [f"{path.relative_to(root)}:{line} names {n}" for n, pat in patterns.items()
                          if pat.search(text)]
    return sorted(set(found))


def _registered() -> list[str]:
    """The registered backend names and the packages of their classes (``trainers.mace`` ...)."""
    from launcher.core.plugins import backend_targets

    targets = backend_targets()
    assert targets, "no backend registered (is the project installed?)"
    return sorted(set(targets) | {v.partition(":")[0].rpartition(".")[0] for v in targets.values()})


def test_kernel_and_doors_name_no_backend():
    """What the launcher knows of a backend comes through trainers.api's contract: no registered name, and no
    backend package, in its code (documentation excepted)."""
    mentions = backend_mentions(REPO, _registered())
    assert not mentions, "backend names in the kernel or the doors:\n" + "\n".join(mentions)


def test_kernel_and_doors_import_only_the_contract_of_trainers():
    imports = collect_imports(REPO)
    bad = [f"{m}:{line} imports {t}" for m, ts in imports.items() if any(_under(m, d) for d in DOORS)
           for t, line in ts if _under(t, "trainers") and t != "trainers.api" and t != "trainers"]
    assert not bad, "\n".join(bad)


def test_hydra_plugins_import_at_start_up_only_what_the_docs_say():
    """Hydra's plugin scan imports every public module of hydra_plugins/mlip_launch on every start."""
    allowed = PLUGIN_START_UP_IMPORTS
    assert all(f"`{m}`" in (REPO / "docs" / "architecture.md").read_text(encoding="utf-8") for m in allowed)
    bad = []
    for path in sorted((REPO / "hydra_plugins" / "mlip_launch").glob("*.py")):
        if path.name.startswith("_") and path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:   # module level only
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{path.name}:{node.lineno} imports {m}" for m in mods
                    if m.split(".")[0] in PACKAGES and not _under(m, "hydra_plugins") and m not in allowed]
    assert not bad, "\n".join(bad)


def test_backend_mentions_are_found(tmp_path):
    """The check finds names in code and ignores them in documentation."""
    _write(tmp_path, "launcher/a.py", '"""Docs may say mace."""\nfrom trainers.mace import x\n\n'
                                      'def f(spec):\n    """mace here is fine."""\n    return spec.backend == "mace"\n')
    _write(tmp_path, "launcher/core/s.py", 'X = _f("gemnet_oc", "the doc of a key: gemnet_oc")\nmace_model = 1\n'
                                           '# a comment on mace\n')
    _write(tmp_path, "hydra_plugins/p.py", 'NAME = "equiformer_v2-like"\nOTHER = "macey"\n')
    assert backend_mentions(tmp_path, ["mace", "gemnet_oc", "equiformer_v2", "trainers.mace"]) == [
        "hydra_plugins/p.py:1 names equiformer_v2",
        "launcher/a.py:2 names mace", "launcher/a.py:2 names trainers.mace", "launcher/a.py:6 names mace",
        "launcher/core/s.py:1 names gemnet_oc", "launcher/core/s.py:2 names mace",
    ]
