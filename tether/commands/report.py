"""`tether report`: one self-contained report.html about the workspace (runs, evaluations, labelers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import WorkspaceOpt, console, user_errors


@user_errors
def report(workspace: Path = WorkspaceOpt,
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the page "
                                              "(default: report.html in the workspace)."),
           examples: int = typer.Option(6, help="Example answers (policy vs reference) to show side by side.")):
    """Write report.html: training curves (reward, gold, KL), gold win rate per evaluation, proxy vs gold
    reward against sqrt(KL), labeler agreement, and example answers. One file, no scripts, plots inline."""
    from tether.eval.report import write_report
    from tether.workspace import open_workspace

    ws = open_workspace(workspace)
    path = write_report(ws.root, out or ws.root / "report.html", examples=examples)
    console.print(Text(f"report: {path}"))
