"""The package's shape, checked from its source: no import cycle among slmjobs' modules (lazy
imports inside functions included), and the ledger's events in docs/CONTRACTS.md are exactly
those slmjobs.events constructs."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from slmjobs import events
from slmjobs.backends import Job

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slmjobs"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The slmjobs modules `path` imports anywhere in it (`from slmjobs import x` names the
    module slmjobs.x when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_slmjobs():
    graph = import_graph()
    assert "slmjobs.chain" in graph and "slmjobs.rundir" in graph["slmjobs.chain"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def contract_events() -> list[str]:
    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    section = text.split("## Ledger events", 1)[1].split("\n## ", 1)[0]
    return re.findall(r'^- `\{"event": "(\w+)"', section, flags=re.M)


def documented_fields(name: str) -> set[str]:
    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    line = re.search(r'^- `(\{"event": "' + name + r'".*?\})`', text, flags=re.M).group(1)
    return set(re.findall(r'"(\w+)":', line))


def test_the_ledger_events_in_the_contracts_are_the_ones_the_code_constructs():
    documented = contract_events()
    assert documented == list(events.EVENTS)
    for name in documented:  # one constructor per kind, named after it, writing its fields
        constructor = getattr(events, name)
        args = {p: (Job(job_id="1", state="ended") if p == "job" else 1)
                for p in inspect.signature(constructor).parameters}
        event = constructor(**args)
        assert event["event"] == name
        assert set(event) - {"event"} <= documented_fields(name), name


# ------------------------------------------------------------ schedulers stay in backends/
SCHEDULER_WORDS = {"qsub", "qstat", "qacct", "qdel", "qconf", "qrls", "JOB_ID", "NSLOTS",
                   "sbatch", "squeue", "sacct", "scancel", "scontrol"}
SCHEDULER_PREFIXES = ("SGE_", "SLURM_", "SBATCH_")


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def scheduler_leaks(path: Path) -> list[str]:
    """Code (not prose) in `path` that names a scheduler's commands or variables, or compares
    a value with a scheduler's name."""
    from slmjobs.backends import REGISTRY

    tree = ast.parse(path.read_text())
    prose = docstrings(tree)
    leaks = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            words = node.value.split()
            if node.value in SCHEDULER_WORDS or node.value.startswith(SCHEDULER_PREFIXES) \
                    or (words and words[0] in SCHEDULER_WORDS):
                leaks.append(f"{path.name}:{node.lineno}: {node.value!r}")
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Constant) and side.value in REGISTRY:
                    leaks.append(f"{path.name}:{node.lineno}: compares with {side.value!r}")
    return leaks


def test_the_leak_finder_finds_leaks(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""qsub in prose is fine."""\nimport os\n'
                      'job = os.environ.get("JOB_ID")\nx = ["qsub", "-terse"]\n'
                      'if kind == "sge":\n    pass\ny = os.environ["SGE_ROOT"]\n'
                      'z = ["sbatch", "--parsable"]\nw = os.environ["SLURM_JOB_ID"]\n')
    assert len(scheduler_leaks(sample)) == 6


def test_no_scheduler_names_or_variables_outside_backends():
    leaks = [leak for path in sorted(PACKAGE.rglob("*.py")) if "backends" not in path.parts
             for leak in scheduler_leaks(path)]
    assert not leaks, leaks


def test_the_job_script_template_names_scheduler_variables_only_in_echo_lines():
    for template in (PACKAGE / "templates").glob("base*.j2"):
        for line in template.read_text().splitlines():
            named = any(w in line for w in (*SCHEDULER_WORDS, *SCHEDULER_PREFIXES))
            if named:
                assert line.lstrip().startswith(("echo", "#", "{#")), f"{template.name}: {line}"


# ------------------------------------------------------------ what a user's command imports
# slmjobs.link is imported by users' training scripts (and the adapters); the wrapper runs in
# every link of a `command` run: the standard library only, and nothing else of slmjobs.
STDLIB_ONLY = {"slmjobs/link.py": set(), "slmjobs/wrapper.py": {"slmjobs", "slmjobs.link"}}


def non_stdlib_imports(path: Path, allowed: set[str]) -> set[str]:
    import sys

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names
                                      if node.module == "slmjobs"}
    return {name for name in found if name.split(".")[0] not in sys.stdlib_module_names
            and name != "__future__" and name not in allowed}


def test_the_import_checker_sees_a_third_party_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport yaml\nfrom slmjobs import rundir\ndef f():\n    import torch\n")
    assert non_stdlib_imports(sample, {"slmjobs", "slmjobs.link"}) == {"yaml", "slmjobs.rundir", "torch"}


def test_link_and_the_wrapper_import_only_the_standard_library():
    for name, allowed in STDLIB_ONLY.items():
        assert non_stdlib_imports(ROOT / name, allowed) == set(), name


def test_the_worker_imports_nothing_of_the_launcher_but_slmjobs_link():
    found = set()
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found |= {(path.name, n) for n in names if n.split(".")[0] == "slmjobs"}
    assert {n for _, n in found} <= {"slmjobs.link"}, found
