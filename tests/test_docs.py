"""The README and docs/ hold together: every relative link resolves to a file (and a `#section`
to a heading there), the README stays a five-minute read, and every code block in it says
whether the tests run it or it needs a cluster."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, section = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif section and file.suffix == ".md" and section not in anchors(file):
                broken.append(f"{page.name}: {target} (no such section)")
    assert not broken, broken


def test_the_readme_is_a_five_minute_read():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_readme_code_block_is_run_by_the_tests_or_needs_a_cluster():
    """Its first line names the test that runs it (`# tested: tests/...`), or says `# on a
    cluster` (a real scheduler and its filesystem, or the network)."""
    blocks = re.findall(r"```(?:bash|python|yaml)?\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        first = block.splitlines()[0]
        tested = re.search(r"# tested: (\S+)", first)
        assert tested or "# on a cluster" in first, f"code block without a marker: {first!r}"
        if tested:
            assert (REPO / tested.group(1).split("::")[0]).exists(), tested.group(1)
