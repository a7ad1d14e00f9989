"""`peft-apps codereview review`: review a unified diff with trained adapters, for people and CI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from peft_apps.core.errors import UserError
from peft_apps.core.endpoint import API_KEY_ENV_HELP, ENDPOINT_HELP, MODEL_HELP, endpoint_options

console = Console(stderr=True)
cli = typer.Typer(help="Code review commands.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode="markdown")


def _adapters(adapter: str | None, adapters: str | None) -> str | dict[str, str]:
    from .data import TASKS

    if adapter and adapters:
        raise UserError("give --adapter (one multi-task adapter) or --adapters (one per task), not both")
    if adapters:
        out = {}
        for part in adapters.split(","):
            k, sep, v = part.partition("=")
            if not sep or k.strip() not in TASKS:
                raise UserError(f"--adapters expects task=DIR pairs ({', '.join(TASKS)}), got {part!r}")
            out[k.strip()] = v.strip()
        found = out
    elif adapter:
        found = adapter
    else:
        raise UserError("no adapter given", hint="train one (`peft-apps train codereview`, or `peft-apps demo "
                                                  "codereview`) and pass --adapter DIR")
    return found


@cli.command("review")
def review_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE",
                                                    help="overrides of the adapter's recipe, e.g. "
                                                         "task.max_new_tokens.comment=48 eval.batch_size=8 "
                                                         "(README: Recipes, codereview)"),
    diff: Optional[str] = typer.Option(None, "--diff", "-d", help="unified diff file (`git diff` output), or - for "
                                       "stdin"),
    git_range: Optional[str] = typer.Option(None, "--git", help="review `git diff BASE..HEAD` of this repository"),
    root: Path = typer.Option(Path("."), "--root", help="the repository the diff's paths are relative to"),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="one codereview run folder trained for "
                                          "necessity and comment (task.task=all, or the demo)"),
    adapters: Optional[str] = typer.Option(None, "--adapters", help="necessity=DIR,comment=DIR[,refine=DIR]"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help=API_KEY_ENV_HELP),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, json, rdjsonl or sarif"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the report here"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
    suggest: bool = typer.Option(False, "--suggest", help="also write revised code for each comment (refinement)"),
    fail_on_comments: bool = typer.Option(False, "--fail-on-comments", help="exit 1 when any hunk gets a comment"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="hunks per batch (default: recipe)"),
    max_hunk_lines: Optional[int] = typer.Option(None, "--max-hunk-lines", min=4, help="cut longer hunks"),
) -> None:
    """Review a diff: which hunks need a comment, and the comment (necessity, then comment generation)."""
    from peft_apps.core.errors import issued_warnings, warn
    from peft_apps.core.io import atomic_write, check_output, read_user_text

    from .diff import files_from, git_diff, parse_diff
    from .report import FORMATS

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out:
        check_output(out, force, "--out")
    if diff and git_range:
        raise UserError("give --diff or --git, not both")
    if git_range:
        text, read_file = git_diff(git_range, root)
        source = f"git diff {git_range}"
    elif diff and diff != "-":
        p = Path(diff)
        if not p.is_file():
            raise UserError(f"diff file not found: {p}")
        text, note = read_user_text(p)
        if note:
            warn(note)
        read_file, source = files_from(root), str(p)
    elif diff == "-" or not sys.stdin.isatty():
        text, read_file, source = sys.stdin.read(), files_from(root), "stdin"
    else:
        raise UserError("no diff given", hint="--diff FILE, --diff - (stdin), or --git BASE..HEAD in a repository")
    ad = _adapters(adapter, adapters)
    from .task import CodeReviewTask
    from .pipeline import check_adapters, review_tasks

    trained, _ = check_adapters(ad, review_tasks(suggest), overrides)  # before the model loads
    limit = max_hunk_lines or CodeReviewTask.model_validate(trained.task).max_hunk_lines
    parsed = parse_diff(text, source, limit, read_file)  # before the model loads: a bad diff fails fast
    for key, what in (("skipped_binary", "binary files"), ("skipped_rename_only", "renames without changes"),
                      ("skipped_deleted", "deleted files"), ("truncated", f"hunks cut to {limit} lines")):
        if parsed.counts.get(key):
            warn(f"{source}: {parsed.counts[key]} {what}" + (" skipped" if key.startswith("skipped") else ""))
    from peft_apps.core.quiet import quiet

    quiet()
    from .pipeline import CodeReviewer

    ep = endpoint_options(endpoint, model, api_key_env)
    reviewer = CodeReviewer.from_pretrained(None if ep else model, ad, suggest=suggest, overrides=overrides, endpoint=ep)
    if max_hunk_lines:
        reviewer.task_settings.max_hunk_lines = max_hunk_lines
    with console.status(f"reviewing {len(parsed.hunks)} hunks"):
        review = reviewer.review_hunks(parsed.hunks, suggest=suggest, batch_size=batch_size, counts=dict(parsed.counts))
    review.counts["warnings"] = len(issued_warnings())
    text_out = FORMATS[fmt](review)
    if out:
        atomic_write(out, text_out)
        console.print(f"{len(review.comments)} comments on {len(review.hunks)} hunks -> {out}")
    else:
        sys.stdout.write(text_out)
    if fail_on_comments and review.comments:
        raise typer.Exit(1)
