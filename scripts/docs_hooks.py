"""MkDocs hooks (mkdocs.yml `hooks:`): the docs' Markdown reads the same on GitHub and in the built site.

GitHub needs a `|` inside a code span of a table cell escaped as `\\|` and shows it without the backslash; Python-Markdown
keeps the backslash inside code. So the pages are written for GitHub and the escape is dropped here, in table rows only.
"""

from __future__ import annotations

import re
from typing import Any

CODE_SPAN = re.compile(r"`[^`\n]*`")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    lines = markdown.split("\n")
    return "\n".join(CODE_SPAN.sub(lambda span: span.group(0).replace("\\|", "|"), line)
                     if line.lstrip().startswith("|") else line for line in lines)
