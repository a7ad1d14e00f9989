"""`peft-apps merge` and `peft-apps export`: standalone models and runtime formats, checked against the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from peft_apps.core.errors import UserError

from .common import ADAPTER_HELP, _out_folder, _prepare, console


def merge_cmd(
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the merged model (HF format, safetensors), or "
                                                      "with --checkpoints the averaged adapter"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="base model (default: the adapter's)"),
    checkpoints: Optional[list[str]] = typer.Option(None, "--checkpoints", "-c", help="average these adapter "
                                                    "checkpoints instead (RUN/checkpoints/checkpoint-*, a quoted "
                                                    "glob, or a run folder for all of its checkpoints)"),
    weights: str = typer.Option("uniform", "--weights", help="with --checkpoints: metric (proportional to the "
                                "app's headline metric at each checkpoint's evaluation), loss (to 1 / eval loss) or "
                                "uniform"),
    metric: Optional[str] = typer.Option(None, "--metric", help="with --weights metric: the metric (default: the "
                                         "app's headline)"),
    more: Optional[list[str]] = typer.Argument(None, metavar="[CHECKPOINT]...", show_default=False,
                                               help="more checkpoints (what the shell expands "
                                                    "--checkpoints RUN/checkpoints/checkpoint-* into)"),
    force: bool = typer.Option(False, "--force", help="write into a folder that already holds files"),
) -> None:
    """Merge an adapter into a standalone model (4-bit bases: into the dequantized weights), or with
    --checkpoints average adapter checkpoints, weighted by their metric, loss or uniformly."""
    if more and not checkpoints:
        raise UserError(f"unexpected argument(s): {' '.join(more)}", hint="checkpoints go after --checkpoints")
    if checkpoints:
        if adapter:
            raise UserError("--adapter and --checkpoints do not go together: merge one adapter into its base, or "
                            "average checkpoints into an adapter")
        if weights not in ("metric", "loss", "uniform"):
            raise UserError(f"--weights {weights}: choose metric, loss or uniform")
        from peft_apps.core.merge import average_checkpoints, find_checkpoints

        found = find_checkpoints(list(checkpoints) + list(more or []))
        _out_folder(out, force)
        report = average_checkpoints(found, out, weights, metric)
        by = f" by {report['metric']}" if report["metric"] else ""
        console.print(f"averaged {len(found)} checkpoints{by} ({weights}) -> {out}", highlight=False)
        for c in report["checkpoints"]:
            value = "" if c["value"] is None else f"  {report['metric']} {c['value']:.4g}"
            console.print(f"  step {c['step']:>6}  weight {c['weight']:.3f}{value}", highlight=False)
        return
    if not adapter:
        raise UserError("merge needs --adapter RUN (or --checkpoints to average checkpoints)")
    _out_folder(out, force)
    _prepare()
    from peft_apps.core.merge import merge_adapter

    path = merge_adapter(adapter, out, model)
    console.print(f"merged model -> {path}")


def export_cmd(
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    to: str = typer.Option(..., "--to", help="merged (HF safetensors, base + adapter), gguf (llama.cpp), ollama "
                                             "(GGUF + Modelfile) or vllm (the LoRA folder vLLM loads)"),
    quant: Optional[str] = typer.Option(None, "--quant", help="gguf / ollama: f16 (default), q8_0 or q4_k_m "
                                        "(q4_k_m needs llama.cpp's llama-quantize)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default: RUN-TARGET beside the run)"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="prompts for the parity check: JSONL with "
                                           "'prompt' (text or chat messages), or one text a line (default: the "
                                           "app's eval records)"),
    check: bool = typer.Option(True, "--check/--no-check", help="compare the export with the adapter on fixed "
                                                                "prompts (greedy outputs, top-1 agreement)"),
    force: bool = typer.Option(False, "--force", help="replace an export folder that exists"),
) -> None:
    """Export a run and check it against the adapter: exit 1 (the export left in OUT.failed) when it answers
    differently, or lost the chat template or the end-of-turn ids."""
    from peft_apps.core.export import check_target

    check_target(to, quant)
    target = out or Path(f"{str(adapter).rstrip('/')}-{to}")
    _prepare()
    from peft_apps.core.export import export

    with console.status(f"exporting {adapter} to {to} and checking it"):
        path, parity = export(Path(adapter), to, target, quant=quant, prompts_file=prompts, check=check,
                              force=force)
    if parity is None:
        console.print(f"{to} export -> {path} (not checked: --no-check)")
        return
    d = parity.as_dict()
    line = (f"{d['greedy_equal']}/{d['prompts']} greedy outputs equal, top-1 agreement "
            f"{d['top1_agreement']:.4f}")
    if not parity.passed:
        console.print(f"[red]parity check failed[/]: {line}", highlight=False)
        for p in d["problems"]:
            console.print(f"  {p}", highlight=False)
        console.print(f"the export was left in {path} (report: {path / 'parity.md'})", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]{to} export[/] -> {path}: {line} (report: parity.md)", highlight=False)
    for hint in ("vllm_serve.txt", "ollama_create.txt"):
        if (path / hint).is_file():
            console.print((path / hint).read_text().strip(), highlight=False, soft_wrap=True)
