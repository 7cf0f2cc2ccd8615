"""`saelab cache list|clear [PATTERN]`: what the Hugging Face cache holds, and removing it.

Registered on the app of `saelab.cli` by importing this module; the work is done by
`saelab.hub.cache_admin`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from saelab.cli import Debug, app

cache_app = typer.Typer(
    no_args_is_help=True,
    help="Show and clear the Hugging Face cache (models and SAE releases), blob and link.",
)
app.add_typer(cache_app, name="cache")

Pattern = Annotated[
    str | None,
    typer.Argument(help="repo glob (google/gemma-scope-*), or ORG/NAME/PATH-GLOB for files"),
]


@cache_app.command("list")
def list_(
    pattern: Pattern = None,
    files: Annotated[bool, typer.Option(help="list every file with its size")] = False,
    debug: Debug = False,
) -> None:
    """What the cache holds: repos, revisions (and the refs at them), sizes, total."""
    from rich.table import Table

    from saelab.hub.cache_admin import list_cache
    from saelab.progress import console
    from saelab.units import format_bytes

    listing = list_cache(pattern, files=files)
    out = console()
    if not listing.repos:
        what = f" matching {pattern!r}" if pattern else ""
        out.print(f"the Hugging Face cache ({listing.cache_dir}) holds nothing{what}")
        return
    table = Table(title=f"Hugging Face cache: {listing.cache_dir}")
    for col in ("repo", "type", "revisions", "files", "size", "unreferenced"):
        table.add_column(col, justify="left" if col in ("repo", "type", "revisions") else "right")
    for r in listing.repos:
        revs = ", ".join(
            f"{v.commit[:8]} ({', '.join(v.refs) if v.refs else 'detached'})" for v in r.revisions
        )
        loose = r.unreferenced + r.incomplete
        table.add_row(
            r.repo_id,
            r.repo_type,
            revs or "-",
            str(sum(v.n_files for v in r.revisions)),
            format_bytes(r.size),
            format_bytes(loose) if loose else "-",
        )
    out.print(table)
    for f in listing.files:
        out.print(f"  {f.repo_id}/{f.path}@{f.revision[:8]}  {format_bytes(f.size)}")
    out.print(f"total: {format_bytes(listing.total)} in {len(listing.repos)} repo(s)")
    for w in listing.warnings:
        out.print(f"  warning: {w}")


@cache_app.command("clear")
def clear(
    pattern: Annotated[str, typer.Argument(help="repo glob, or ORG/NAME/PATH-GLOB for files")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    dry_run: Annotated[bool, typer.Option(help="only say what would go")] = False,
    debug: Debug = False,
) -> None:
    """Remove cached repos or files (link and blob) matching PATTERN."""
    from saelab.hub.cache_admin import clear_cache
    from saelab.progress import console
    from saelab.units import format_bytes

    plan = clear_cache(pattern, dry_run=True)
    names = plan.removed_repos or plan.removed_files
    out = console()
    out.print(f"{'would remove' if dry_run else 'removing'} {len(names)} item(s), freeing"
              f" {format_bytes(plan.freed)}: " + ", ".join(names[:8])
              + (", ..." if len(names) > 8 else ""))  # fmt: skip
    if dry_run:
        return
    if not yes and not typer.confirm("go ahead?", default=False):
        raise typer.Exit(1)
    done = clear_cache(pattern)
    out.print(f"freed {format_bytes(done.freed)}")
