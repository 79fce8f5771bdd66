"""Generate docs/settings.md from crawlproj/settings.py: every setting, its default, its comment.

    python -m crawlproj.tools.settings_doc --output docs/settings.md   # regenerate
    python -m crawlproj.tools.settings_doc --check docs/settings.md    # exit 1 if it is stale

The source is parsed, never imported: a setting is an UPPER_CASE name assigned at module level
(``X = v`` or ``X: T = v``), its default is the value as written, its meaning the comment at the
end of its line. ``# -- Name ----`` comment lines start sections; full-line comments right under
a header describe the section. ``D["path"] = n`` and ``D.update({...})`` add entries to a
component dict (``DOWNLOADER_MIDDLEWARES``...), listed under the section where they are made.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_NAME = "crawlproj/settings.py"
COMMAND = "python -m crawlproj.tools.settings_doc --output docs/settings.md"
HEADER = re.compile(r"^#\s*--\s*(?P<title>.*?)\s*-{3,}\s*$")
SETTING_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: Scrapy's settings whose value is a {component: order} dict (``None`` turns one off).
COMPONENT_DICTS = frozenset({
    "ADDONS", "DOWNLOADER_MIDDLEWARES", "DOWNLOAD_HANDLERS", "EXTENSIONS", "FEED_EXPORTERS",
    "FEED_STORAGES", "ITEM_PIPELINES", "SPIDER_CONTRACTS", "SPIDER_MIDDLEWARES",
})
FIRST_SECTION = "Project"


@dataclass
class Setting:
    name: str
    default: str
    comment: str = ""
    annotation: str = ""


@dataclass
class Component:
    setting: str  # the component dict, e.g. DOWNLOADER_MIDDLEWARES
    path: str  # the key as written (a dotted path, or any expression)
    order: str  # the value as written (an int, or None: off)
    comment: str = ""


@dataclass
class Section:
    title: str
    intro: list[str] = field(default_factory=list)
    settings: list[Setting] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)


class _Comments:
    """The comments of a source file by line: trailing ones and full-line ones apart."""

    def __init__(self, source: str):
        self.trailing: dict[int, str] = {}
        self.full: dict[int, str] = {}
        lines = source.splitlines()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            row, col = tok.start
            target = self.full if not lines[row - 1][:col].strip() else self.trailing
            target[row] = tok.string

    def text(self, line: int) -> str:
        return _strip(self.trailing.get(line, ""))

    def above(self, line: int, floor: int) -> list[str]:
        """Full-line comments directly above ``line`` (down to ``floor``), headers excluded."""
        found: list[str] = []
        row = line - 1
        while row > floor and row in self.full and not HEADER.match(self.full[row]):
            found.append(_strip(self.full[row]))
            row -= 1
        return found[::-1]


def _strip(comment: str) -> str:
    return comment[1:].strip() if comment.startswith("#") else comment.strip()


def _source(source: str, node: ast.AST) -> str:
    """``node`` as written, on one line: comments and line breaks dropped, tokens kept."""
    text = ast.get_source_segment(source, node)
    if text is None:
        return ast.unparse(node)
    return text if "\n" not in text else _one_line(text)


def _one_line(text: str) -> str:
    out: list[str] = []
    end: tuple[int, int] | None = None
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO("(" + text + ")").readline):
        if tok.type in skip:
            continue
        if tok.string in (")", "]", "}") and out and out[-1] == ",":
            out.pop()  # the trailing comma of a multi-line display
        spaced = bool(out) and tok.start != end and out[-1].strip() not in "([{" \
            and tok.string not in ")]},:"
        out.append((" " if spaced else "") + tok.string)
        end = tok.end
    return "".join(out)[1:-1]


def _key(source: str, node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return _source(source, node)


def parse(source: str) -> list[Section]:
    """The sections of a settings module's source, in file order."""
    tree = ast.parse(source)
    comments = _Comments(source)
    sections = [Section(FIRST_SECTION)]
    matches = sorted((row, HEADER.match(text)) for row, text in comments.full.items())
    headers = [(row, m.group("title")) for row, m in matches if m]
    component_dicts = set(COMPONENT_DICTS)
    for stmt in _statements(tree.body):  # names mutated in place are component dicts too
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                    component_dicts.add(target.value.id)
    last_line = 0  # where the previous statement (or section intro) ended
    for stmt in _statements(tree.body):
        while headers and headers[0][0] < stmt.lineno:
            last_line = _open_section(sections, comments, headers.pop(0), stmt.lineno)
        _add(source, comments, sections[-1], stmt, comments.above(stmt.lineno, last_line), component_dicts)
        last_line = stmt.end_lineno or stmt.lineno
    while headers:  # headers after the last statement
        _open_section(sections, comments, headers.pop(0), len(source.splitlines()) + 1)
    return [s for s in sections if s.settings or s.components or s.intro or s.title != FIRST_SECTION]


def _statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Simple statements of a module body, those under a module-level if/try/with included."""
    out: list[ast.stmt] = []
    for stmt in body:
        if isinstance(stmt, ast.If):
            out += _statements(stmt.body) + _statements(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            out += _statements(stmt.body)
            for handler in stmt.handlers:
                out += _statements(handler.body)
            out += _statements(stmt.orelse) + _statements(stmt.finalbody)
        elif isinstance(stmt, ast.With):
            out += _statements(stmt.body)
        else:
            out.append(stmt)
    return out


def _open_section(sections: list[Section], comments: _Comments, header: tuple[int, str], limit: int) -> int:
    """Start the section of ``header``; its intro is the full-line comments right under it.
    Returns the last line of the intro."""
    row, title = header
    intro: list[str] = []
    while row + 1 < limit and row + 1 in comments.full and not HEADER.match(comments.full[row + 1]):
        row += 1
        intro.append(_strip(comments.full[row]))
    sections.append(Section(title, intro))
    return row


def _add(source: str, comments: _Comments, section: Section, stmt: ast.stmt, above: list[str],
         component_dicts: set[str]) -> None:
    first, last = stmt.lineno, stmt.end_lineno or stmt.lineno
    comment = comments.text(last) or comments.text(first)
    note = " ".join(above + ([comment] if comment else []))
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        value = stmt.value
        if value is None:  # a bare annotation defines nothing
            return
        annotation = ast.unparse(stmt.annotation) if isinstance(stmt, ast.AnnAssign) else ""
        for target in targets:
            if isinstance(target, ast.Name) and SETTING_NAME.match(target.id):
                name = target.id
                if name in component_dicts and isinstance(value, ast.Dict):
                    section.settings.append(Setting(name, "components below" if value.keys else "{}",
                                                    note, annotation))
                    _add_items(source, comments, section, name, value, first)
                else:
                    section.settings.append(Setting(name, _source(source, value), note, annotation))
            elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                  and SETTING_NAME.match(target.value.id)):
                section.components.append(Component(target.value.id, _key(source, target.slice),
                                                    _source(source, value), note))
    elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
          and isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr == "update"
          and isinstance(stmt.value.func.value, ast.Name) and SETTING_NAME.match(stmt.value.func.value.id)):
        name = stmt.value.func.value.id
        for arg in stmt.value.args:
            if isinstance(arg, ast.Dict):
                _add_items(source, comments, section, name, arg, first)
        for kw in stmt.value.keywords:
            if kw.arg is not None:
                section.components.append(Component(name, kw.arg, _source(source, kw.value),
                                                     comments.text(kw.value.end_lineno or kw.lineno)))


def _add_items(source: str, comments: _Comments, section: Section, name: str, node: ast.Dict,
               floor: int) -> None:
    one_line = node.lineno == node.end_lineno  # its trailing comment is the setting's
    for key, value in zip(node.keys, node.values):
        start = key.lineno if key is not None else value.lineno
        end = value.end_lineno or value.lineno
        trailing = "" if one_line else comments.text(end)
        note = " ".join(comments.above(start, floor) + ([trailing] if trailing else []))
        if key is None:  # {**OTHER}: everything of another dict
            section.components.append(Component(name, "**" + _source(source, value), "", note))
        else:
            section.components.append(Component(name, _key(source, key), _source(source, value), note))
        floor = end


CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+\1")


def _cell(text: str) -> str:
    """Text for a table cell: no column break; outside code spans no HTML tag, no emphasis."""
    parts, at = [], 0
    for m in CODE_SPAN.finditer(text):
        parts += [_plain(text[at:m.start()]), m.group(0)]
        at = m.end()
    parts.append(_plain(text[at:]))
    return "".join(parts).replace("|", "\\|")


def _plain(text: str) -> str:
    return text.replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return fence + pad + text.replace("|", "\\|") + pad + fence


def render(source: str, source_name: str = SOURCE_NAME) -> str:
    """docs/settings.md for the settings module ``source``."""
    sections = parse(source)
    total = sum(len(s.settings) for s in sections)
    out = [
        "# Settings reference",
        "",
        f"<!-- Generated from {source_name} by crawlproj/tools/settings_doc.py: do not edit by hand. -->",
        "",
        f"Generated from [`{source_name}`](../{source_name}) (its defaults and their one-line comments); "
        "after a change there, regenerate this page:",
        "",
        "```sh",
        COMMAND,
        "```",
        "",
        "`--check docs/settings.md` exits 1 when the page is stale (tests/test_docs.py checks it). "
        "Every setting can be given on the command line (`scrapy crawl broad -s NAME=VALUE`) or in "
        "a project's settings; a bad value stops the crawl at start with the setting's name "
        "([security.md](security.md#bad-settings-stop-the-crawl-at-start)).",
        "",
        f"{total} settings in {len(sections)} sections:",
        "",
    ]
    out += [f"- [{s.title}](#{_anchor(s.title)})" for s in sections]
    for s in sections:
        out += ["", f"## {s.title}", ""]
        if s.intro:
            out += [" ".join(s.intro), ""]
        if s.settings:
            out += ["| setting | default | meaning |", "|---|---|---|"]
            for st in s.settings:
                default = _code(st.default) if st.default != "components below" else "components below"
                if st.annotation:
                    default += f" ({_code(st.annotation)})"
                out.append(f"| `{st.name}` | {default} | {_cell(st.comment)} |")
        if s.components:
            if s.settings:
                out.append("")
            out += ["Components:", "", "| in | component | order | note |", "|---|---|---|---|"]
            for c in s.components:
                order = (_code(c.order) if c.order else "") + (" (off)" if c.order == "None" else "")
                out.append(f"| `{c.setting}` | {_code(c.path)} | {order} | {_cell(c.comment)} |")
    return "\n".join(out) + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", title.lower())
    return text.replace(" ", "-")


def settings_path() -> Path:
    spec = importlib.util.find_spec("crawlproj.settings")
    if spec is None or spec.origin is None:
        raise SystemExit("crawlproj.settings not found")
    return Path(spec.origin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawlproj.tools.settings_doc", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", type=Path, default=None, help=f"the settings module (default: {SOURCE_NAME})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--output", type=Path, help="write the page here (default: stdout)")
    group.add_argument("--check", type=Path, metavar="PAGE", help="exit 1 if PAGE is not what would be written")
    args = parser.parse_args(argv)
    text = render((args.settings or settings_path()).read_text(encoding="utf-8"))
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
