"""`--to ollama`: the Modelfile (TEMPLATE cut from the training template's rendered pieces, a PARAMETER stop per
end-of-turn token) and the Go-template renderer that checks it."""

from __future__ import annotations

import json
from pathlib import Path

from peft_apps.core.errors import UserError


PROBE = {"system": "\x01SYS\x01", "user": "\x01USER\x01"}


def _pieces(tokenizer) -> dict[str, str]:
    """The training template cut, by rendering probe conversations, into what comes before and after the
    system text, before the user text with and without a system turn, and after it up to where the model
    answers: the parts Ollama's `.System` / `.Prompt` / `.Response` template says."""
    def render(msgs):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    s, u = PROBE["system"], PROBE["user"]
    both = render([{"role": "system", "content": s}, {"role": "user", "content": u}])
    alone = render([{"role": "user", "content": u}])
    if both.count(s) != 1 or both.count(u) != 1 or alone.count(u) != 1:
        raise UserError("the chat template could not be cut into the pieces of a Modelfile TEMPLATE",
                        hint="--to gguf, and write the Modelfile's TEMPLATE by hand")
    system_open, rest = both.split(s)
    between, answer_open = rest.split(u)
    user_open, answer_open_alone = alone.split(u)
    if answer_open != answer_open_alone:
        raise UserError("the chat template opens the answer differently with and without a system turn: "
                        "a Modelfile TEMPLATE cannot say it", hint="--to gguf")
    return {"system_open": system_open, "between": between, "user_open": user_open, "answer_open": answer_open}


def go_template(p: dict[str, str]) -> str:
    """Ollama's template for the pieces (Go template syntax)."""
    return ("{{ if .System }}" + p["system_open"] + "{{ .System }}" + p["between"] + "{{ else }}" + p["user_open"]
            + "{{ end }}{{ .Prompt }}" + p["answer_open"] + "{{ .Response }}")


def render_go(template: str, **values: str) -> str:
    """Render the Go-template subset `go_template` writes (`{{ .X }}`, `{{ if .X }}...{{ else }}...{{ end }}`),
    as Ollama would; anything else is an error. The check renders the Modelfile with it."""
    import re

    out, stack = [], [True]  # stack: whether the current branch is emitted
    for part in re.split(r"({{.*?}})", template, flags=re.S):
        m = re.fullmatch(r"{{\s*(.*?)\s*}}", part, flags=re.S)
        if not m:
            if all(stack):
                out.append(part)
            continue
        action = m.group(1)
        if action.startswith("if "):
            stack.append(bool(values.get(action[3:].strip().lstrip("."), "")))
        elif action == "else":
            stack[-1] = not stack[-1]
        elif action == "end":
            stack.pop()
        elif re.fullmatch(r"\.\w+", action):
            if all(stack):
                out.append(values.get(action[1:], ""))
        else:
            raise ValueError(f"unsupported template action {{{{ {action} }}}}")
    return "".join(out)


def _stop_texts(tok, want: list[int]) -> list[str]:
    return sorted({tok.decode([i]) for i in want} - {""})


def modelfile(work: Path, gguf_name: str) -> str:
    """A Modelfile: the GGUF, a TEMPLATE built from the training template's pieces, and the end-of-turn
    tokens as stop parameters."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work))
    gen = json.loads((work / "generation_config.json").read_text()).get("eos_token_id")
    want = gen if isinstance(gen, list) else [gen]
    template = go_template(_pieces(tok))
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in _stop_texts(tok, want)]
    return "\n".join(lines) + "\n"


def check_modelfile(path: Path, tok, conversations, want: list[int]) -> list[str]:
    """What keeps the Modelfile from reproducing the training template on these prompts, or from stopping at
    the end-of-turn tokens (empty: nothing)."""
    import re

    text = path.read_text()
    m = re.search(r'TEMPLATE """(.*?)"""', text, flags=re.S)
    if not m:
        return ["the Modelfile has no TEMPLATE"]
    problems = []
    stops = set(json.loads(s) for s in re.findall(r"^PARAMETER stop (.+)$", text, flags=re.M))
    missing = set(_stop_texts(tok, want)) - stops
    if missing:
        problems.append(f"the Modelfile does not stop at {sorted(missing)}")
    for n, messages in enumerate(conversations):
        roles = [x["role"] for x in messages]
        if roles not in (["user"], ["system", "user"]):
            problems.append(f"prompt {n}: a {'/'.join(roles)} conversation does not fit .System/.Prompt")
            continue
        want_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        system = messages[0]["content"] if roles[0] == "system" else ""
        if render_go(m.group(1), System=system, Prompt=messages[-1]["content"]) != want_text:
            problems.append(f"prompt {n}: the Modelfile's TEMPLATE renders it differently from the training template")
            break
    return problems
