"""docs/architecture.md "Extending Harvester" cannot drift from tested code: every python block of
the section that defines a class or a decorated function is a verbatim piece of the test
plug-ins (tests/plugins.py) or of tests/unit/test_retry_policy.py (trailing whitespace aside),
and every registry the section names exists in the worker."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import tests.plugins  # noqa: F401 - registers the examples, so their names can be checked
from worker.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
SOURCES = (ROOT / "tests" / "plugins.py", ROOT / "tests" / "unit" / "test_retry_policy.py")
REGISTRIES = {"FETCHERS", "EXTRACTORS", "OUTPUTS", "TASKS", "SOURCES"}
# One worked example of each: its first line, as the section must show it.
EXAMPLES = ('@FETCHERS.register("static")', '@EXTRACTORS.register("test-title")',
            '@TASKS.register("test-record")', '@OUTPUTS.register("test-files")',
            "class GitHubPolicy(RetryPolicy):")
DEFINES = re.compile(r"^\s*(class\s+\w|@\w)", re.MULTILINE)


def section(doc: str, title: str = "Extending Harvester") -> str:
    """The text of the ``## title`` section, up to the next second-level heading."""
    start = doc.index(f"\n## {title}\n")
    end = doc.find("\n## ", start + 1)
    return doc[start:] if end < 0 else doc[start:end]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def drifted(text: str) -> list[str]:
    """The section's defining python blocks that are not verbatim in the tested sources."""
    tested = [normalized(p.read_text()) for p in SOURCES]
    return [b for b in python_blocks(text) if DEFINES.search(b)
            and not any(normalized(b) in src for src in tested)]


def test_each_docs_example_is_the_tested_plugin() -> None:
    text = section(DOC.read_text())
    defining = [b for b in python_blocks(text) if DEFINES.search(b)]
    firsts = [normalized(b).splitlines()[0] for b in defining]
    assert sorted(firsts) == sorted(EXAMPLES), "one worked example each, in full"
    assert drifted(text) == []


def test_an_edited_example_is_caught() -> None:
    text = section(DOC.read_text())
    assert "    kind = \"static\"\n" in text
    for edited in (text.replace("    kind = \"static\"\n", "    kind = \"static\"  # x\n"),
                   text.replace("return ()\n", "return ( )\n", 1),
                   text.replace("self.max_pause)", "self.max_pause + 1)", 1)):
        assert edited != text
        assert len(drifted(edited)) == 1
    assert drifted(text.replace("    kind = \"static\"\n", "    kind = \"static\"   \n")) == []


def test_each_registry_named_exists() -> None:
    text = section(DOC.read_text())
    # Named as a path (`worker.fetchers.FETCHERS`) in the table, or bare in the prose and code.
    dotted = {name: module for module, name in
              re.findall(r"`(worker(?:\.\w+)+)\.([A-Z][A-Z_]+)`", text)}
    assert set(dotted) == REGISTRIES
    for name, module in dotted.items():
        registry = getattr(importlib.import_module(module), name)
        assert isinstance(registry, Registry), name
    bare = set(re.findall(r"\b([A-Z][A-Z_]{3,})\.(?:register|create)\b", text))
    assert bare - {"REGISTRY"} <= REGISTRIES  # REGISTRY: the prose's placeholder for any of them
    assert {"FETCHERS", "EXTRACTORS", "OUTPUTS", "TASKS"} <= bare
    # The names the examples register are the ones the tests use.
    for block in python_blocks(text):
        for reg, name in re.findall(r'^@([A-Z]+)\.register\("([^"]+)"\)', block, re.MULTILINE):
            module = dotted[reg]
            assert name in getattr(importlib.import_module(module), reg), (reg, name)
