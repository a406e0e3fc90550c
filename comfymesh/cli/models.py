"""`comfymesh models upload|list|rm`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from comfymesh.cli._context import cli_context, timestamp
from comfymesh.cli.output import Output
from comfymesh.client import _requests
from comfymesh.model.v1 import model_service_pb2 as model_pb

app = typer.Typer(help="Upload, list and delete model files (safetensors).", no_args_is_help=True)


class _PlainUploadProgress:
    """Upload progress as lines every 25% (for logs and pipes)."""

    def __init__(self, output: Output, name: str) -> None:
        self._output = output
        self._name = name
        self._quarter = -1

    def __call__(self, sent: int, total: int) -> None:
        quarter = 4 * sent // total if total else 4
        if quarter > self._quarter:
            self._quarter = quarter
            self._output.note(f"uploading {self._name}: {sent}/{total} bytes ({25 * quarter}%)")


def _kind_name(kind: int) -> str:
    return model_pb.ModelKind.Name(model_pb.ModelKind.ValueType(kind)).removeprefix("MODEL_KIND_").lower()


@app.command()
def upload(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="A .safetensors file.", show_default=False)],
           kind: Annotated[str, typer.Option(help="ComfyUI folder: checkpoint, lora, vae, controlnet, "
                                                  "upscale_model, embedding, text_encoder, diffusion_model, "
                                                  "clip_vision.")],
           name: Annotated[str | None, typer.Option(help="The name nodes reference (default: the file "
                                                         "name).")] = None,
           json_: Annotated[bool, typer.Option("--json", help="Print the model as JSON.")] = False) -> None:
    """Upload a model file, with progress."""
    context = cli_context(ctx)
    output = context.output
    if not file.is_file():
        raise typer.BadParameter(f"{file} is not a readable file", param_hint="FILE")
    kind_value = _requests.model_kind(kind)  # a bad kind fails before any bytes move
    with context.client() as client:
        if output.err.is_terminal:
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          console=output.err) as bar:
                task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
                model = client.models.upload(file, kind_value, name=name,
                                             progress=lambda sent, total: bar.update(task, completed=sent,
                                                                                     total=total))
        else:
            model = client.models.upload(file, kind_value, name=name,
                                         progress=_PlainUploadProgress(output, file.name))
    if json_:
        output.json(model)
    else:
        output.line(f"{model.model_id} {model.name} ({_kind_name(model.kind)}, {model.size_bytes} bytes, "
                    f"sha256 {model.sha256})")


@app.command("list")
def list_(ctx: typer.Context,
          kind: Annotated[str | None, typer.Option(help="Only this kind (e.g. lora).")] = None,
          name_contains: Annotated[str, typer.Option("--name", help="Only names containing this.")] = "",
          json_: Annotated[bool, typer.Option("--json", help="Print proto3 JSON.")] = False) -> None:
    """Models visible to the caller."""
    context = cli_context(ctx)
    with context.client() as client:
        models = list(client.models.list(kind=kind, name_contains=name_contains))
    if json_:
        context.output.json(models)
        return
    context.output.table(("ID", "NAME", "KIND", "SIZE", "CREATED"), (
        (m.model_id, m.name, _kind_name(m.kind), m.size_bytes, timestamp(m.create_time)) for m in models))


@app.command("rm")
def remove(ctx: typer.Context, model_ids: Annotated[list[str], typer.Argument(metavar="MODEL_ID...")]) -> None:
    """Delete models (refused with MODEL_IN_USE while executions reference them)."""
    context = cli_context(ctx)
    with context.client() as client:
        for model_id in model_ids:
            client.models.delete(model_id)
            context.output.line(f"deleted {model_id}")
