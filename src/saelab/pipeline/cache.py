"""`saelab cache list|clear [PATTERN]`: what the Hugging Face cache holds, and removing it
(the work is `saelab.hub.cache_admin`'s; these are its options and its printing)."""

from __future__ import annotations

from rich.table import Table

from saelab.hub.cache_admin import clear_cache, list_cache
from saelab.pipeline.options import Options, option
from saelab.progress import console
from saelab.units import format_bytes

PATTERN_HELP = "repo glob (google/gemma-scope-*), or ORG/NAME/PATH-GLOB for files"


class CacheListConfig(Options):
    """What the cache holds: repos, revisions (and the refs at them), sizes, total."""

    pattern: str | None = option(None, PATTERN_HELP, argument=True)
    files: bool = option(False, "list every file with its size")


class CacheClearConfig(Options):
    """Remove cached repos or files (link and blob) matching PATTERN."""

    pattern: str = option(..., PATTERN_HELP, argument=True)
    yes: bool = option(False, "do not ask", "--yes", "-y")
    dry_run: bool = option(False, "only say what would go")


def run_cache_list(c: CacheListConfig) -> None:
    listing = list_cache(c.pattern, files=c.files)
    out = console()
    if not listing.repos:
        what = f" matching {c.pattern!r}" if c.pattern else ""
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


def plan_cache_clear(c: CacheClearConfig) -> bool:
    """Say what clearing would remove; True when there is something to go ahead with."""
    plan = clear_cache(c.pattern, dry_run=True)
    names = plan.removed_repos or plan.removed_files
    console().print(f"{'would remove' if c.dry_run else 'removing'} {len(names)} item(s),"
                    f" freeing {format_bytes(plan.freed)}: " + ", ".join(names[:8])
                    + (", ..." if len(names) > 8 else ""))  # fmt: skip
    return not c.dry_run


def run_cache_clear(c: CacheClearConfig) -> None:
    done = clear_cache(c.pattern)
    console().print(f"freed {format_bytes(done.freed)}")
