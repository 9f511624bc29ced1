"""Write the CLI reference (Markdown) from the typer app itself, so the docs cannot drift from `--help`.

Every command, argument and option comes from click's introspection of `edgecompress.cli.app`: the option column and
the `[default: ...; required]` notes are what the command's own `get_help_record` gives `--help`, and the help text is
the same rich markup rendered as plain text. The docs build runs this through `scripts/gen_docs_pages.py`
(mkdocs-gen-files); by hand:

    python scripts/cli_reference.py                 # Markdown on stdout
    python scripts/cli_reference.py docs/cli.md     # or into a file
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer.main
from rich.text import Text

TITLE = "# CLI reference"
INTRO = (
    "Generated from the typer app (`edgecompress.cli.app`) by `scripts/cli_reference.py` at every docs build, so it "
    "says what `edgecompress COMMAND --help` says. Every command also takes `-h` / `--help`. An option's default is "
    "shown as `--help` shows it: in brackets, or, for the options of `build` (which a `--config` file can also set), "
    "at the end of its description."
)
CODE_SPAN = re.compile(r"(`[^`]*`)")
MARKDOWN_SPECIAL = re.compile(r"([\\*_\[\]|])")


def plain(markup: str | None) -> str:
    """Help as the terminal shows it: rich markup rendered to text (`[bold]`, `\\[` escapes), lines of a paragraph
    joined, paragraphs kept apart by a blank line."""
    if not markup:
        return ""
    text = Text.from_markup(markup).plain
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs)


def markdown_text(text: str) -> str:
    """Text safe in a Markdown paragraph or table cell: code spans kept as written, everything else escaped."""
    parts = CODE_SPAN.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        escaped = MARKDOWN_SPECIAL.sub(r"\\\1", parts[i])
        parts[i] = escaped.replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts)


def param_row(param: Any, ctx: Any) -> tuple[str, str] | None:
    """(names with the value's metavar, description with `--help`'s bracketed notes) of one parameter; None if hidden."""
    if getattr(param, "hidden", False):
        return None
    record = param.get_help_record(ctx)
    own_help = getattr(param, "help", None) or ""
    if record is None:  # click's plain Argument has no help record
        return param.human_readable_name, markdown_text(plain(own_help))
    names, help_with_notes = record
    notes = help_with_notes[len(own_help):].strip() if help_with_notes.startswith(own_help) else ""
    description = markdown_text(plain(own_help))
    if notes:
        description = f"{description} {markdown_text(notes)}".strip()
    return names, description


def panel(param: Any) -> str:
    """The `--help` section a parameter is listed under: typer's rich_help_panel, else Arguments or Options."""
    default = "Arguments" if param.param_type_name == "argument" else "Options"
    return getattr(param, "rich_help_panel", None) or default


def params_tables(command: Any, ctx: Any) -> list[str]:
    """One table per `--help` section, in `--help`'s order: Arguments, Options, then the named panels."""
    help_option = command.get_help_option(ctx)
    panels: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
    for param in command.get_params(ctx):
        if param is not help_option and (row := param_row(param, ctx)) is not None:
            panels.setdefault(panel(param), []).append(row)
    filled = {name: rows for name, rows in panels.items() if rows}
    if not filled:
        return ["No options besides `--help`."]
    lines: list[str] = []
    for name, rows in filled.items():
        if len(filled) > 1:
            lines += [f"**{markdown_text(name)}**", ""]
        lines += ["| parameter | description |", "|---|---|"]
        lines += [f"| `{names}` | {description.replace(chr(10), ' ')} |" for names, description in rows]
        lines.append("")
    return lines[:-1]


def usage(command: Any, ctx: Any, path: str) -> list[str]:
    return ["```", " ".join([path, *command.collect_usage_pieces(ctx)]), "```"]


def command_section(command: Any, ctx: Any, path: str) -> list[str]:
    lines = [f"## `{path}`", ""]
    if getattr(command, "deprecated", False):
        lines += ["**Deprecated.**", ""]
    if command.help:
        lines += [markdown_text(plain(command.help)), ""]
    lines += [*usage(command, ctx, path), "", *params_tables(command, ctx), ""]
    if command.epilog:
        lines += ["```text", plain(command.epilog), "```", ""]
    return lines


def render(app: Any = None, prog: str = "edgecompress") -> str:
    """The whole reference page for `app` (default: edgecompress's typer app)."""
    if app is None:
        from edgecompress.cli import app
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name=prog)
    lines = [TITLE, "", INTRO, ""]
    if group.help:
        lines += [markdown_text(plain(group.help)), ""]
    lines += ["## Global options", "", "Given before the command.", "", *usage(group, root, prog), "",
              *params_tables(group, root), ""]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or getattr(command, "hidden", False):
            continue
        ctx = command.context_class(command, info_name=name, parent=root)
        lines += command_section(command, ctx, f"{prog} {name}")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    page = render()
    if len(argv) > 1:
        Path(argv[1]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
