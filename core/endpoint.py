"""Where generation runs when it does not run here: an OpenAI-compatible server's URL, the served model's
name and the API key's variable (the options `--endpoint`, `--model` and `--api-key-env` of every command
that generates). Torch-free, so the command line starts fast; the client is `core/engine/remote.py`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from peft_apps.core.errors import UserError

ENDPOINT_HELP = ("generate on this OpenAI-compatible server (peft-apps serve, vLLM, Ollama) instead of loading the "
                 "model here, e.g. http://gpu-box:8000")
MODEL_HELP = "base model (default: the adapter's); with --endpoint: the served model's name (default: the run folder's)"
API_KEY_ENV_HELP = "with --endpoint: the environment variable holding the server's API key (default: OPENAI_API_KEY)"
TOKEN_ID_SERVERS = ("peft-apps", "vllm")  # `owned_by` of servers whose /v1/completions takes token ids


@dataclass
class Endpoint:
    url: str
    model: str | None = None
    api_key_env: str | None = None
    workers: int = 32  # requests in flight at once

    @property
    def base_url(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/v1") else u + "/v1"

    def api_key(self) -> str:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise UserError(f"--api-key-env {self.api_key_env}: that environment variable is not set")
            return key
        return os.environ.get("OPENAI_API_KEY") or "none"


def endpoint_options(endpoint: str | None, model: str | None, api_key_env: str | None) -> Endpoint | None:
    """The CLI's --endpoint/--model/--api-key-env as an Endpoint (None without --endpoint)."""
    if endpoint is None:
        if api_key_env is not None:
            raise UserError("--api-key-env applies with --endpoint only")
        return None
    if not endpoint.startswith(("http://", "https://")):
        raise UserError(f"--endpoint {endpoint!r}: give the server's URL, e.g. http://127.0.0.1:8000")
    return Endpoint(endpoint, model, api_key_env)
