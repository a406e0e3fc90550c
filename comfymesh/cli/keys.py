"""`comfymesh keys create|list|revoke`."""

from __future__ import annotations

from typing import Annotated

import typer

from comfymesh.cli._context import cli_context, timestamp

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command()
def create(ctx: typer.Context,
           name: Annotated[str, typer.Option(help="A label for the key.")] = "",
           scope: Annotated[list[str] | None, typer.Option(help="Grant only this scope. Repeatable "
                                                                "(default: all of the owner's).")] = None,
           ttl: Annotated[float | None, typer.Option(min=1, help="Expire after this many seconds.")] = None,
           principal: Annotated[str, typer.Option(help="The owner (admins; default: the caller).")] = "",
           json_: Annotated[bool, typer.Option("--json", help="Print the key and its secret as JSON.")] = False,
           ) -> None:
    """Create an API key; its secret is printed once and never again."""
    context = cli_context(ctx)
    with context.client() as client:
        created = client.keys.create(name, scopes=scope or [], ttl=ttl, principal_id=principal)
    if json_:
        context.output.json(created)
        return
    context.output.fields([("key id", created.api_key.key_id), ("prefix", created.api_key.prefix),
                           ("secret", created.secret)])
    context.output.note("keep the secret now: it is not shown again")


@app.command("list")
def list_(ctx: typer.Context,
          principal: Annotated[str, typer.Option(help="Keys of this principal (admins).")] = "",
          json_: Annotated[bool, typer.Option("--json", help="Print proto3 JSON.")] = False) -> None:
    """API keys (never their secrets)."""
    context = cli_context(ctx)
    with context.client() as client:
        keys = list(client.keys.list(principal_id=principal))
    if json_:
        context.output.json(keys)
        return
    context.output.table(("KEY ID", "NAME", "PREFIX", "CREATED", "REVOKED"), (
        (k.key_id, k.display_name, k.prefix, timestamp(k.create_time), timestamp(k.revoke_time)) for k in keys))


@app.command()
def revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="KEY_ID")]) -> None:
    """Revoke an API key; it stops working within seconds."""
    context = cli_context(ctx)
    with context.client() as client:
        key = client.keys.revoke(key_id)
    context.output.line(f"revoked {key.key_id}")
