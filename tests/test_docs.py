"""The documentation: README.md short and right about `dev`, docs/ links whole, the settings
reference generated from crawlproj/settings.py and never stale. No servers."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from crawlproj.tools import settings_doc

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SETTINGS_PAGE = DOCS / "settings.md"
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"""!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)""")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """Markdown without code blocks, code spans and comments: where links are links."""
    return CODE_SPAN.sub("", FENCE.sub("", HTML_COMMENT.sub("", text)))


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors of a page (lower case, punctuation dropped, spaces to hyphens,
    repeats numbered)."""
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def settings_names() -> set[str]:
    module = importlib.import_module("crawlproj.settings")
    return {name for name in vars(module) if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)}


# -- the settings reference ------------------------------------------------------------------


def test_every_setting_is_in_the_settings_reference() -> None:
    page = SETTINGS_PAGE.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", page, re.M))
    missing = sorted(settings_names() - documented)
    assert not missing, f"settings of crawlproj/settings.py missing from docs/settings.md: {missing}"


def test_settings_reference_is_what_the_generator_writes() -> None:
    expected = settings_doc.render(settings_doc.settings_path().read_text(encoding="utf-8"))
    assert SETTINGS_PAGE.read_text(encoding="utf-8") == expected, (
        f"docs/settings.md is stale: run {settings_doc.COMMAND}")


def test_generator_check_flag(tmp_path: Path) -> None:
    page = tmp_path / "settings.md"
    assert settings_doc.main(["--output", str(page)]) == 0
    assert settings_doc.main(["--check", str(page)]) == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert settings_doc.main(["--check", str(page)]) == 1


SAMPLE = '''"""A settings module as people write them."""
import os
BOT_NAME = "x"  # the bot
# -- First block ------------------------------------------
# What the block is about,
# on two lines.
NAMES: list[str] = []  # typed, empty
BARE: int
FALLBACK = 30 * 86400.0  # an expression, as written
# said above
LIMIT = 1024**3
WRITE_CONCERN = {
    "w": "majority",  # inside
    "j": True,
}  # durable
EXTENSIONS = {
    # above the key
    "a.Ext": 500,  # a's note
    "b.Off": None,
}
ADDONS = {"a.addons.Node": 100}  # one line: the setting's comment
if os.environ.get("CI"):
    ON_CI = True  # set on CI only
# -- Second block ---
DOWNLOADER_MIDDLEWARES = {}
DOWNLOADER_MIDDLEWARES["c.Mw"] = 100  # c
DOWNLOADER_MIDDLEWARES.update({
    "d.Mw": 50,  # d
})
'''


def test_generator_reads_ordinary_python() -> None:
    sections = {s.title: s for s in settings_doc.parse(SAMPLE)}
    assert list(sections) == ["Project", "First block", "Second block"]
    first = sections["First block"]
    assert first.intro == ["What the block is about,", "on two lines."]
    rows = {s.name: s for s in first.settings}
    assert "BARE" not in rows  # an annotation without a value defines nothing
    assert (rows["NAMES"].default, rows["NAMES"].annotation, rows["NAMES"].comment) == ("[]", "list[str]", "typed, empty")
    assert (rows["FALLBACK"].default, rows["FALLBACK"].comment) == ("30 * 86400.0", "an expression, as written")
    assert (rows["LIMIT"].default, rows["LIMIT"].comment) == ("1024**3", "said above")
    assert (rows["WRITE_CONCERN"].default, rows["WRITE_CONCERN"].comment) == ('{"w": "majority", "j": True}', "durable")
    assert rows["ON_CI"].comment == "set on CI only"
    components = [(c.setting, c.path, c.order, c.comment) for c in first.components]
    assert components == [("EXTENSIONS", "a.Ext", "500", "above the key a's note"),
                          ("EXTENSIONS", "b.Off", "None", ""),
                          ("ADDONS", "a.addons.Node", "100", "")]
    assert rows["ADDONS"].comment == "one line: the setting's comment"
    second = sections["Second block"]
    assert [(c.path, c.order, c.comment) for c in second.components] == [("c.Mw", "100", "c"), ("d.Mw", "50", "d")]
    page = settings_doc.render(SAMPLE)
    assert "| `FALLBACK` | `30 * 86400.0` | an expression, as written |" in page
    assert "| `DOWNLOADER_MIDDLEWARES` | `c.Mw` | `100` | c |" in page


# -- README.md and docs/ -----------------------------------------------------------------------


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move the rest to docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"broken links in {page.relative_to(ROOT)}: {broken}"


def test_docs_pages_are_linked_from_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in LINK.findall(prose(README.read_text(encoding="utf-8")))}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs/ pages README.md does not link: {unlinked}"


def dev_commands() -> set[str]:
    """The commands ./dev accepts: the arms of its case statement, and its usage line."""
    script = (ROOT / "dev").read_text(encoding="utf-8")
    arms = set(re.findall(r"^\s+([a-z][a-z-]*)\)\s*$", script, re.M))
    usage = subprocess.run(["bash", str(ROOT / "dev")], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2, usage
    words = set(re.search(r"usage: \./dev ([a-z|-]+)", usage.stderr).group(1).split("|"))  # type: ignore[union-attr]
    assert arms == words, f"dev's case arms {arms} and its usage line {words} differ"
    return arms


def test_readme_commands_are_the_ones_dev_accepts() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = "\n".join(m.group(0) for m in FENCE.finditer(text))
    used = re.findall(r"^\./dev ([a-z-]+)", blocks, re.M)
    assert used[:2] == ["demo", "test"], f"the README's first two commands should be ./dev demo and ./dev test, got {used}"
    accepted = dev_commands()
    assert set(used) <= accepted, f"README.md runs ./dev {sorted(set(used) - accepted)}, which dev does not accept"
    assert "exec \"$VENV/bin/crawlproj\" demo" in (ROOT / "dev").read_text(encoding="utf-8")  # demo = the main job


# -- the layout of docs/architecture.md: one line per module, from its docstring -------------------

ARCHITECTURE = DOCS / "architecture.md"
LAYOUT_BLOCK = re.compile(r"(<!-- layout: generated by tests/test_docs.py -->\n```\n)(.*?)(```\n<!-- /layout -->)", re.S)
LAYOUT_HEAD = [
    ("scrapy.cfg", "Scrapy project file, [deploy] targets for scrapyd"),
    ("pyproject.toml", "pinned dependencies, extras (tools, deploy, scrapyd, test), the crawlproj command"),
    ("dev", "./dev demo | test | setup: the developer entry point"),
]
LAYOUT_TAIL = [
    ("deploy/", "scrapyd config, systemd units, compose file, deploy checks"),
    ("docs/", "this documentation; settings.md is generated from settings.py"),
    ("tests/", "tests against real processes and sockets (testing.md)"),
    ("bench/", "benchmarks: print figures, write bench/results/ (benchmarks.md)"),
]
PACKAGES = {"crawlproj": "the runtime: what a node and the dispatcher run (the egg sent to scrapyd)",
            "crawlproj_testing": "the test harness, never in the egg"}


def _summary(path: Path) -> str:
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().split("\n")[0].strip()


def _tree(package: Path, depth: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for path in sorted(package.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        indent = "  " * depth
        if path.is_dir() and (path / "__init__.py").exists():
            rows.append((f"{indent}{path.name}/", _summary(path / "__init__.py")))
            rows += _tree(path, depth + 1)
        elif path.is_dir() and path.name == "assets":
            rows.append((f"{indent}{path.name}/", "the live status page (HTML, JS)"))
        elif path.suffix == ".py" and path.name != "__init__.py":
            rows.append((f"{indent}{path.name}", _summary(path)))
    return rows


def render_layout() -> str:
    rows = list(LAYOUT_HEAD)
    for name, what in PACKAGES.items():
        rows.append((f"{name}/", what))
        rows += _tree(ROOT / name, 1)
    rows += LAYOUT_TAIL
    return "".join(f"{name:<30}{what}".rstrip() + "\n" for name, what in rows)


def test_layout_in_architecture_lists_every_module() -> None:
    match = LAYOUT_BLOCK.search(ARCHITECTURE.read_text(encoding="utf-8"))
    assert match, "docs/architecture.md: the generated layout block is missing"
    assert all(summary for _, summary in _tree(ROOT / "crawlproj", 1)), "every module needs a docstring"
    assert match.group(2) == render_layout(), (
        "docs/architecture.md: the layout is stale; run `python tests/test_docs.py` to write it")


if __name__ == "__main__":
    text = ARCHITECTURE.read_text(encoding="utf-8")
    ARCHITECTURE.write_text(LAYOUT_BLOCK.sub(lambda m: m.group(1) + render_layout() + m.group(3), text),
                            encoding="utf-8")
