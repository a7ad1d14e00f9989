"""Generation on an OpenAI-compatible server: `peft-apps serve`, vLLM with the run folder as a LoRA
module, or Ollama. The pipelines run here as in-process (prompts, diff parsing, the sandbox, parsing and
scoring); only the completions go to the server, as `/v1/completions` requests sent concurrently so the
server batches them.

    engine = open_engine(None, "runs/codereview-lora", Endpoint("http://gpu-box:8000"))

The run folder stays the source of the recipe and the tokenizer (no weights are read). Each adapter is
asked for by its served name: the run folder's name (what `peft-apps serve` and `--lora-modules NAME=DIR`
call it), or `Endpoint.model` (one name, or `local=served,...` for several adapters).

Prompts go as token ids to servers that take them and tokenize as this tool does (`peft-apps serve`,
vLLM), so greedy outputs equal an in-process run's; other servers (Ollama) get the prompt's text.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from peft_apps.core.endpoint import TOKEN_ID_SERVERS, Endpoint, endpoint_options  # noqa: F401  (re-exported)
from peft_apps.core.errors import UserError

from .options import BASE
from .rows import RowEngine, RowRequest

def open_engine(base: Any = None, adapters: Any = None, endpoint: str | Endpoint | None = None,
                model: str | None = None, api_key_env: str | None = None, **kw: Any):
    """An `Engine` loaded here, or with `endpoint` (a URL or an `Endpoint`) a `RowEngine` generating on that
    server: `model` names the served model (default: the run folder's name), `api_key_env` the environment
    variable holding the API key. What the pipelines' `from_pretrained(..., endpoint=, model=, api_key_env=)`
    call."""
    if endpoint is None:
        if model is not None or api_key_env is not None:
            raise UserError("model= and api_key_env= name a served model: they apply with endpoint= only")
        from .engine import Engine

        return Engine.from_pretrained(base, adapters, **kw)
    ep = endpoint if isinstance(endpoint, Endpoint) else endpoint_options(endpoint, model, api_key_env)
    return remote_engine(ep, base, adapters)


def _connect(ep: Endpoint):
    import openai

    client = openai.OpenAI(base_url=ep.base_url, api_key=ep.api_key(), max_retries=3, timeout=600)
    try:
        models = {m.id: m for m in client.models.list()}
    except openai.APIConnectionError as e:
        raise UserError(f"cannot reach the server at {ep.url}: {e.__cause__ or e}",
                        hint="start one with `peft-apps serve RUN_DIR` (or check the URL)") from None
    except openai.APIStatusError as e:
        raise UserError(f"the server at {ep.url} refused to list its models: {e.status_code} {_message(e)}") from None
    return client, models


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(e, "message", e))


def _served_names(ep: Endpoint, folders: dict[str, Path]) -> dict[str, str]:
    if ep.model and "=" in ep.model:
        pairs = dict(p.split("=", 1) for p in ep.model.split(",") if "=" in p)
        unknown = set(pairs) - set(folders)
        if unknown:
            raise UserError(f"--model {ep.model}: {', '.join(sorted(unknown))} is no adapter here; "
                            f"the adapters are {', '.join(folders)}")
        return {k: pairs.get(k, Path(d).resolve().name) for k, d in folders.items()}
    if ep.model:
        if len(folders) > 1:
            raise UserError(f"--model {ep.model}: {len(folders)} adapters are used ({', '.join(folders)}); "
                            f"name each: --model " + ",".join(f"{k}=NAME" for k in folders))
        return {k: ep.model for k in folders}
    return {k: Path(d).resolve().name for k, d in folders.items()}


def remote_engine(ep: Endpoint, base: Any, adapters: Any) -> RowEngine:
    from peft_apps.core.config import ModelConfig
    from peft_apps.core.modeling import load_tokenizer
    from peft_apps.core.run_folder import check_run_folder

    from .loading import adapter_base_config

    folders = {"default": Path(adapters)} if isinstance(adapters, (str, Path)) else \
        {k: Path(v) for k, v in dict(adapters or {}).items()}
    for d in folders.values():
        check_run_folder(d)
    first = next(iter(folders.values()), None)
    if first is not None and (first / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(adapter_base_config(first), str(first))
    elif base is not None or first is not None:
        tokenizer = load_tokenizer(base if isinstance(base, ModelConfig) else
                                   ModelConfig(base=base) if base else adapter_base_config(first))
    else:
        raise UserError("no adapter and no base model: nothing tells which tokenizer the server's model uses")
    names = _served_names(ep, folders)
    client, models = _connect(ep)
    for k, name in names.items():
        if name not in models:
            raise UserError(f"the server at {ep.url} does not serve {name!r} (the model for {folders[k]}); it serves: "
                            f"{', '.join(models) or '(nothing)'}",
                            hint="name the served model with --model NAME")
    base_name = next((m for m, card in models.items() if getattr(card, "parent", None) is None
                      and m not in names.values()), None)
    if base_name is not None:
        names[BASE] = base_name
    token_ids = all(getattr(models[n], "owned_by", "") in TOKEN_ID_SERVERS for n in names.values())
    context = getattr(models[next(iter(names.values()))], "max_model_len", None) if names else None
    if not context:
        context = min(int(getattr(tokenizer, "model_max_length", 4096) or 4096), 1 << 20)
    return RowEngine(tokenizer, list(folders), _completer(ep, client, names, tokenizer, token_ids), int(context))


def _completer(ep: Endpoint, client, names: dict[str, str], tokenizer, token_ids: bool):
    import openai

    bos = getattr(tokenizer, "bos_token", None)

    def prompt_of(ids: list[int]) -> Any:
        if token_ids:
            return ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        return text[len(bos):] if bos and text.startswith(bos) else text  # the server adds its own BOS

    def one(q: RowRequest) -> str:
        if q.adapter not in names:
            raise UserError(f"the server at {ep.url} serves no model for {q.adapter!r}")
        sample = q.do_sample and q.temperature > 0
        try:
            out = client.completions.create(
                model=names[q.adapter], prompt=prompt_of(q.ids), max_tokens=q.max_new_tokens,
                temperature=q.temperature if sample else 0.0, top_p=q.top_p if sample else 1.0,
                stop=q.stop or None, seed=q.seed)
        except openai.APIConnectionError as e:
            raise UserError(f"lost the server at {ep.url}: {e.__cause__ or e}") from None
        except openai.APIStatusError as e:
            raise UserError(f"the server at {ep.url} answered {e.status_code}: {_message(e)}") from None
        return out.choices[0].text

    def complete(requests: list[RowRequest]) -> list[str]:
        if len(requests) == 1:
            return [one(requests[0])]
        with ThreadPoolExecutor(max_workers=max(1, min(ep.workers, len(requests)))) as pool:
            return list(pool.map(one, requests))

    return complete
