import os

import pytest

import helpers.toy_app  # noqa: F401  the README's walk-through app: registered, so the app contract covers it


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Builtin models are built once per session into a temporary cache, never the user's."""
    cache = os.environ.get("PEFT_APPS_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["PEFT_APPS_CACHE"] = cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from peft_apps.core.quiet import quiet

    quiet()
    from helpers import simdevice

    simdevice.device()  # before any backward pass: autograd sizes its device queues once per process
    yield


@pytest.fixture(scope="session")
def tiny_path(_isolated_cache):
    from peft_apps.core.tiny import builtin_model_path

    return builtin_model_path("tiny")


@pytest.fixture()
def sft_app():
    from peft_apps.core import get_app

    return get_app("sft")
