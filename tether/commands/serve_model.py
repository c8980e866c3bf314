"""`tether serve-model`: one checkpoint behind an OpenAI-compatible chat-completions endpoint
(`tether.serving`), for trying a trained policy or for another tether's `tether judge --url`."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import console, quiet_transformers, user_errors
from tether.errors import TetherError


@user_errors
def serve_model(model: str = typer.Argument("bundled", help="'bundled', a checkpoint folder (e.g. "
                                            "runs/ppo-1/model) or a Hugging Face hub id."),
                host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for the whole network)."),
                port: int = typer.Option(8080, help="Port to listen on."),
                api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TETHER_API_KEY",
                                                      help="Require 'Authorization: Bearer KEY' on every request."),
                threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: every core).")):
    """Serve a model at http://HOST:PORT/v1 (POST /v1/chat/completions, GET /v1/models), OpenAI style:
    any OpenAI client, or `tether judge --url http://HOST:PORT/v1`, can use it."""
    import torch
    import uvicorn

    from tether.serving import bind, create_app

    if not 0 <= port <= 65535:
        raise TetherError(f"--port: expected 0-65535, got {port}")
    if threads is not None and threads < 1:
        raise TetherError(f"--threads: at least 1, got {threads}")
    if api_key is not None and not api_key.strip():
        raise TetherError("--api-key: empty")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    quiet_transformers()
    sock = bind(host, port)  # before the slow model load: a busy port fails at once
    try:
        app = create_app(model, api_key=api_key)
    except BaseException:
        sock.close()
        raise
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(Text(f"note: listening on {host} without --api-key: anyone who can reach it can use it",
                           style="yellow"))
    engine = app.state.engine
    console.print(Text(f"serving {model} (context {engine.context} tokens) at http://{host}:{sock.getsockname()[1]}/v1 "
                       f"— POST /v1/chat/completions, GET /v1/models{'; bearer token required' if api_key else ''}. "
                       "Ctrl+C stops."))
    uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="off")).run(sockets=[sock])
