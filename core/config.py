"""Recipes: one YAML file per app and method, validated by a typed schema, with `key=value` overrides.

    app: myapp
    model: {base: Qwen/Qwen2.5-7B-Instruct, quantization: nf4}
    peft: {method: lora, r: 16, alpha: 32, target_modules: auto}
    data: {train: path/to/train.json, max_length: 2048}
    train: {lr: 2.0e-4, epochs: 3, batch_size: 4}

`peft-apps train APP train.lr=1e-4 peft.r=8` overrides single keys; an unknown or ill-typed key is a
`UserError` naming the key and the valid choices. App-specific settings live under `task:` and are
validated by the app's own schema (`App.task_schema`, checked when the app registers).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from peft_apps.core.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    base: str = Field("builtin:tiny", description="hub id, local directory, a .gguf file, builtin:tiny / builtin:small "
                      "(random, offline) or builtin:smollm2-135m / builtin:gemma3-270m (real, from GGUF packages)")
    gguf_file: str | None = Field(None, description="a GGUF file inside model.base (a folder or hub id)")
    base_sha256: str | None = Field(None, description="the GGUF base's SHA-256; filled in by train, checked by "
                                    "--resume, eval, serve and export")
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: Literal["nf4", "int8", "none"] = "nf4"
    double_quant: bool = True
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flex_attention"] = "auto"


class PeftConfig(_Section):
    method: str = "lora"
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["auto", "all-linear"] = "auto"
    modules_to_save: list[str] = Field(default_factory=list)
    # prompt / prefix tuning
    num_virtual_tokens: int = Field(20, ge=1)
    prompt_init_text: str | None = None
    # adalora rank budget
    init_r: int = Field(12, ge=1)
    target_r: int = Field(8, ge=1)
    # anything else, passed to the peft config as is (e.g. {use_rslora: true})
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from peft_apps.core.methods import METHODS, unknown_method_message

        if v not in METHODS:
            raise ValueError(unknown_method_message(v))
        return v


class DataConfig(_Section):
    train: str | None = Field(None, description="training file (app format); default: the app's bundled sample")
    eval: str | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="held out from train when no eval file")
    template: str = "default"
    system_prompt: str | None = None
    max_length: int = Field(1024, ge=8)
    truncation: Literal["keep_start", "drop"] = "keep_start"
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)


class TrainConfig(_Section):
    output_dir: str = "runs/{app}-{recipe}"
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    batch_size: int = Field(4, ge=1, description="records per step over all processes (each of N takes 1/N)")
    grad_accum: int = Field(1, ge=1)
    batching: Literal["auto", "group_by_length", "packing", "random"] = "auto"
    gradient_checkpointing: bool = True
    mixed_precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    optim: str = "auto"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    save_steps: int = Field(100, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="every N steps: eval loss and the app's own metrics")
    eval_examples: int = Field(32, ge=1, description="how many eval examples the metrics while training use")
    select_by: str = Field("last", description="which adapter the run keeps: last, loss (lowest eval loss), "
                                               "auto (the app's headline metric) or a metric name")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    loss_kernel: Literal["auto", "torch", "liger"] = "auto"
    memory_check: bool = Field(True, description="on a GPU, refuse before loading when the estimate exceeds free memory")
    distributed: Literal["none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = Field(
        "none", description="several processes (--num-processes N, accelerate launch, torchrun): ddp, fsdp, "
                            "deepspeed-zero2 or deepspeed-zero3; none with N > 1 is ddp")
    offload: bool = Field(False, description="fsdp / deepspeed: parameters and optimizer state in CPU memory")


    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_means_fp32(cls, v: Any) -> Any:
        return "fp32" if v in (False, "no", "none") else v


class EvalConfig(_Section):
    split: Literal["eval", "train"] = "eval"
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    limit: int | None = Field(None, ge=1)
    # self-consistency: k sampled answers per example, the majority of the parsed answers kept (apps that
    # vote read it; `--samples K` on eval and predict)
    samples: int = Field(1, ge=1)


class Recipe(_Section):
    app: str
    name: str = "custom"
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    peft: PeftConfig = Field(default_factory=PeftConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    task: dict[str, Any] = Field(default_factory=dict, description="app-specific settings")
    # the keys set by command-line overrides (messages say where a bad value came from)
    _overridden: set[str] = PrivateAttr(default_factory=set)

    def set_by_user(self, key: str) -> bool:
        """Whether `key` (e.g. "data.train") was set by a command-line override, not by the recipe file."""
        return key in self._overridden

    def output_dir(self) -> Path:
        return Path(self.train.output_dir.format(app=self.app, recipe=self.name, method=self.peft.method))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ---- loading and overrides ----------------------------------------------------------------------


def _choices_at(model: type[BaseModel], path: list[str]) -> tuple[str, list[str]]:
    """Walk `path` through the schema; return (dotted prefix that is valid, valid keys there)."""
    cur: type[BaseModel] = model
    done: list[str] = []
    for part in path:
        fields = cur.model_fields
        if part not in fields:
            return ".".join(done), sorted(fields)
        ann = fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cur = ann
            done.append(part)
        else:
            return ".".join(done + [part]), []
    return ".".join(done), sorted(cur.model_fields)


def _allowed_values(model: type[BaseModel], path: list[str]) -> list[str]:
    cur: Any = model
    for part in path:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return []
        cur = cur.model_fields[part].annotation
    out: list[str] = []

    def walk(t: Any) -> None:
        origin = typing.get_origin(t)
        if origin is Literal:
            out.extend(str(a) for a in typing.get_args(t))
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            for a in typing.get_args(t):
                walk(a)

    walk(cur)
    if path and path[-1] == "method" and path[0] == "peft":
        from peft_apps.core.methods import METHODS

        out = sorted(METHODS)
    return out


def _format_validation_error(err: ValidationError, source: str, overridden: set[str] = frozenset()) -> str:
    lines = [f"invalid recipe ({source}):"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if key in overridden:
            source_note = " (set on the command line)"
        else:
            source_note = ""
        if e["type"] == "extra_forbidden":
            parent, valid = _choices_at(Recipe, loc[:-1])
            lines.append(f"  unknown key {key!r}; valid keys{' under ' + parent if parent else ''}: {', '.join(valid)}")
        else:
            msg = e["msg"]
            allowed = _allowed_values(Recipe, loc)
            extra = f" (choices: {', '.join(allowed)})" if allowed and "choose one of" not in msg \
                and "Input should be" not in msg else ""
            lines.append(f"  {key}: {msg}{extra} (got {e.get('input')!r}){source_note}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)",
                        hint="the app is named once, before the overrides: `peft-apps train APP key=value ...`; "
                             "an app's own command (`APP train ...`) already names it")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise UserError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        if path[0] != "task":  # task.* is free-form here and checked by the app
            parent, valid = _choices_at(Recipe, path)
            if valid and path[-1] not in valid and ".".join(path) != parent:
                where = f" under {parent!r}" if parent else ""
                raise UserError(f"unknown recipe key {'.'.join(path)!r}; valid keys{where}: {', '.join(valid)}")
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"cannot set {'.'.join(path)!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None, app: str | None = None) -> Recipe:
    from peft_apps.core.io import read_text

    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "recipe file")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping at the top level")
    data.setdefault("name", path.stem)
    if app is not None:
        data.setdefault("app", app)
    data = apply_overrides(data, overrides or [])
    overridden = {".".join(parse_override(o)[0]) for o in overrides or []}
    recipe = validate_recipe(data, source=str(path), overridden=overridden)
    recipe._overridden = set(overridden)
    return recipe


def validate_recipe(data: dict[str, Any], source: str = "recipe", overridden: set[str] = frozenset()) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, source, overridden)) from None


def validate_task(recipe: Recipe, schema: type[BaseModel]) -> BaseModel:
    """Validate the recipe's `task:` section against an app's schema, with the same error style."""
    try:
        return schema.model_validate(recipe.task)
    except ValidationError as err:
        lines = [f"invalid task settings for app {recipe.app!r}:"]
        for e in err.errors():
            key = "task." + ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                lines.append(f"  unknown key {key!r}; valid keys: {', '.join(sorted(schema.model_fields))}")
            else:
                lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise UserError("\n".join(lines)) from None


def wrong_app(run_dir: str | Path, trained: str, app: str) -> UserError:
    """The one message every command and pipeline gives for an adapter of another app."""
    return UserError(f"adapter {run_dir} was trained for app {trained!r}, not {app!r}",
                     hint=f"use it with the {trained} commands, or train one with `peft-apps train {app}`")


_RUN_RECIPES: dict[tuple[str, int, int], Recipe] = {}  # recipe.yaml (path, mtime, size) -> its recipe


def run_recipe(run_dir: str | Path, app: str) -> Recipe:
    """The recipe a run folder was trained with (its recipe.yaml), or `app`'s defaults when it has none
    (an adapter from elsewhere). A folder that is not a run's, or a run of another app, is a UserError
    (before any model loads). A file read before and unchanged since (same modification time and size) is
    not parsed again (3.5 ms a recipe, which a server's app endpoints paid on every request); each caller
    gets its own copy."""
    from peft_apps.core.run_folder import check_run_folder

    check_run_folder(run_dir, app)
    f = Path(run_dir) / "recipe.yaml"
    if not f.is_file():
        return Recipe(app=app)
    st = f.stat()
    key = (str(f.resolve()), st.st_mtime_ns, st.st_size)
    recipe = _RUN_RECIPES.get(key)
    if recipe is None:
        recipe = load_recipe(f)
        if len(_RUN_RECIPES) >= 64:
            _RUN_RECIPES.clear()
        _RUN_RECIPES[key] = recipe
    if recipe.app != app:
        raise wrong_app(run_dir, recipe.app, app)
    return recipe.model_copy(deep=True)
