"""The shared training core: recipes, models, PEFT methods, data, training, inference, CLI.

Nothing here imports torch at module import time, so the CLI starts fast; the heavy modules
(`trainer`, `engine`, `modeling`, `merge`, `tiny`) import it themselves.

Layers, from the bottom; a module imports only from layers below its own (import-linter checks it:
pyproject's [tool.importlinter], tests/test_layers.py). `errors`; `resources` (package paths, and the
folders apps registered, recorded here by the registry so that nothing low imports it); files and
small state (`io`, `checkpoint`, `sampling`, `quiet`, `endpoint`: a remote server's options), `tuners` (this
project's peft tuners, registered with peft) and `gguf` (GGUF files as bases, converted once; the builtin real
models); plain data and pure functions (`data`, `methods`,
`run_folder`, `report`, `prompts`, `loss`); `config`
(recipes and schemas as data); `real_tokenizers`; `tiny`, `memory` and `distributed` (N-process training
from the recipe); `bases` (where a model.base comes from: builtin, folder, GGUF, hub); `modeling` (runtime
choice, loading a model); `engine` (inference); `loop` (the shared
eval/predict/score loop); `registry` (apps; it calls the loop); the trl subclass `sft_trainer` and
`training` above it (one module per concern; `trainer` keeps its old names); `inspect`, `merge`, `serve`
(the HTTP server) beside `trainer`; `export` (merged, GGUF, Ollama, vLLM, with the parity check) and `sweep`
(every method with one recipe, in child processes) above `merge`; `cli` on top. The apps sit above the core and never
import each other; the core imports no app (the registry discovers them by name).

No import circles, not even through imports deferred into functions or made for type checking only
(tests/test_layers.py walks grimp's graph of every import): a module that needs a type from a layer above
names it loosely (`Any`, or a Protocol of what it reads) instead of importing it. The one exception is the
registry's discovery of the apps, which import the core.
"""

from peft_apps.core.errors import UserError
from peft_apps.core.registry import App, get_app, list_apps, register_app

__all__ = ["App", "UserError", "get_app", "list_apps", "register_app"]
