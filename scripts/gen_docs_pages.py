"""The docs pages that are generated at every `mkdocs build` (mkdocs-gen-files runs this; see mkdocs.yml).

reference/cli.md comes from the typer app (scripts/cli_reference.py); reference/targets.md and
reference/calibration.md are targets/README.md and calibration/README.md as they are, so each fact has one home
and the site cannot drift from it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mkdocs_gen_files

REPO = Path(__file__).resolve().parent.parent
COPIED_PAGES = {  # docs page -> the repository file it is
    "reference/targets.md": "targets/README.md",
    "reference/calibration.md": "calibration/README.md",
}


def cli_reference_module():
    """scripts/ is not a package: load cli_reference.py beside this file by path."""
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "scripts" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_reference_module().render())
mkdocs_gen_files.set_edit_path("reference/cli.md", "../scripts/cli_reference.py")

for page_path, source in COPIED_PAGES.items():
    with mkdocs_gen_files.open(page_path, "w") as page:
        page.write((REPO / source).read_text(encoding="utf-8"))
    mkdocs_gen_files.set_edit_path(page_path, f"../{source}")
