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
