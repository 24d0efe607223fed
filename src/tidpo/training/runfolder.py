"""The run folder ``runs/<name>/``: checkpoints, ``config.yaml``, the final ``model/``.

Files are written under a temporary name and renamed (`tidpo.fileio`), so a failure (a full
disk, a kill) never leaves a half-written ``config.yaml`` or ``model/``; a failed write becomes a
one-line `RunError` saying what was kept. ``--resume`` continues from the newest *complete*
checkpoint (the Trainer writes ``trainer_state.json`` last).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from tidpo.fileio import write_text_atomic
from tidpo.training.config import TIDPOConfig
from tidpo.training.settings import RunError, RunOptions

__all__ = ["RunFolderCallback", "check_checkpoint", "clear_run", "forget_after",
           "last_complete_checkpoint", "save_model", "tensorboard_dir", "write_config",
           "write_errors", "write_failure"]  # fmt: skip


@contextlib.contextmanager
def tensorboard_dir(path: Path) -> Iterator[None]:
    """Point the Trainer's tensorboard writer at ``path`` for this run (the env var it reads)."""
    key = "TENSORBOARD_LOGGING_DIR"
    before = os.environ.get(key)
    os.environ[key] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _checkpoint_step(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _is_complete_checkpoint(path: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a folder without it was cut short."""
    return path.is_dir() and (path / "trainer_state.json").is_file()


def last_complete_checkpoint(out: Path) -> Path | None:
    done = [p for p in out.glob("checkpoint-*") if _is_complete_checkpoint(p)]
    return max(done, key=_checkpoint_step) if done else None


def clear_run(out: Path) -> None:
    """``--overwrite``: remove the previous run's checkpoints, model, metrics and tb logs."""
    for item in [*out.glob("checkpoint-*"), out / "model", out / "model.tmp", out / "tb"]:
        shutil.rmtree(item, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def forget_after(out: Path, checkpoint: Path | None) -> None:
    """Before resuming: drop the metrics logged after ``checkpoint`` (they are logged again) and
    checkpoint folders that were cut short (a kill or a full disk while writing them)."""
    step = _checkpoint_step(checkpoint) if checkpoint else 0
    for folder in out.glob("checkpoint-*"):
        if not _is_complete_checkpoint(folder):
            shutil.rmtree(folder, ignore_errors=True)
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return
    kept = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line + "\n")
        except (ValueError, AttributeError, TypeError):
            continue  # a line cut short by the kill
    write_text_atomic(metrics, "".join(kept))


def write_failure(err: BaseException, where: Path) -> str | None:
    """Why a write failed, in a few words, or None when ``err`` is not a failed write.

    A full disk shows up as ``OSError(ENOSPC)`` from Python's own writes, but as a
    ``SafetensorError`` (safetensors) or a ``RuntimeError`` from ``torch.save``'s writer.
    """
    text = " ".join(str(err).split())
    if isinstance(err, ConnectionError):  # a peer process went away: not a write
        return None
    if isinstance(err, OSError):
        if err.errno == errno.ENOSPC:
            return "no space left on device"
        reason = err.strerror or text or type(err).__name__
        return f"{reason}: {err.filename}" if err.filename else reason
    name = type(err).__name__
    torch_writer = isinstance(err, RuntimeError) and (
        "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text
    )
    if name != "SafetensorError" and not torch_writer:
        return None
    if "No space left on device" in text or _free_bytes(where) < 1 << 20:
        return "no space left on device"
    return f"write failed ({text[:160]})"


def _free_bytes(where: Path) -> int:
    for folder in (where, *where.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 1 << 62


@contextlib.contextmanager
def write_errors(what: str, out: Path, main: bool) -> Iterator[None]:
    """Turn a failed write during training into a one-line `RunError`; drop a cut checkpoint."""
    try:
        yield
    except Exception as err:
        reason = write_failure(err, out)
        if reason is None:
            raise
        if main:
            for folder in out.glob("checkpoint-*"):
                if not _is_complete_checkpoint(folder):
                    shutil.rmtree(folder, ignore_errors=True)
        last = last_complete_checkpoint(out)
        kept = f"the last complete checkpoint is {last.name}" if last else "no checkpoint was saved"
        raise RunError(
            f"{what}: a write failed ({reason}); {kept} "
            "(free some space, then run the same command with --resume)"
        ) from err


def write_config(path: Path, cfg: TIDPOConfig, opts: RunOptions, model_path: Path,
                 data_path: Path | str, rows: int | None = None) -> None:  # fmt: skip
    """Write the run's resolved configuration: model, data (and ``rows``, the pairs trained on),
    LoRA, the TI-DPO fields and every ``TrainingArguments`` value."""
    resolved = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    doc: dict[str, Any] = {
        "model": str(model_path),
        "dataset": str(data_path),
        "lora": opts.lora,
        "tidpo": cfg.tidpo_dict(),
        "training_arguments": resolved,
    }
    if rows is not None:
        doc["train_rows"] = rows
    if opts.lora:
        doc["lora_r"] = opts.lora_r
    for key in ("model_revision", "dataset_config", "dataset_train_split"):  # hub ids' choices
        if getattr(opts, key):
            doc[key] = getattr(opts, key)
    text = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
    try:
        write_text_atomic(path, text)
    except OSError as err:
        reason = write_failure(err, path.parent)
        raise RunError(f"{path}: cannot write the run's config ({reason})") from err


def save_model(model: Any, tokenizer: Any, path: Path, state_dict: Any = None) -> None:
    """Save to a temporary sibling folder, then rename: never a half-written model folder.

    A previous ``model/`` (a re-run with ``--overwrite`` or ``--resume``) is replaced only once
    the new one is complete; a failed write removes the temporary folder and raises `RunError`.
    """
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except Exception as err:
        reason = write_failure(err, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous model back
        if reason is None:
            raise
        raise RunError(
            f"{path}: cannot save the model ({reason}); nothing was written there "
            "(free some space, then run the same command with --resume)"
        ) from err
    shutil.rmtree(old, ignore_errors=True)


def check_checkpoint(folder: Path) -> None:
    """Check that a checkpoint's files can be read (safetensors headers, ``torch.save`` zip
    archives, ``trainer_state.json``) before resuming from it; raises `RunError` naming the
    file, instead of a traceback from deep inside the Trainer."""
    from safetensors import safe_open

    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass  # the header must cover the whole file: a truncated one fails here
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise OSError(f"corrupt member {bad}")
            elif path.name == "trainer_state.json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # safetensors, zipfile and json each fail in their own way
            raise RunError(
                f"{path}: the checkpoint cannot be read ({' '.join(str(err).split())[:160]}); "
                "delete this checkpoint folder to resume from an earlier one"
            ) from None


class RunFolderCallback(TrainerCallback):
    """Makes the folder a run when training begins (after any checkpoint has loaded), on the
    main process: clears a previous run (``--overwrite``), drops what was logged after the
    checkpoint (``--resume``), then writes ``config.yaml``."""

    def __init__(self, out: Path, checkpoint: Path | None, resume: bool, overwrite: bool,
                 main: bool, write: Callable[[], None]) -> None:  # fmt: skip
        self.out, self.checkpoint, self.resume, self.overwrite = out, checkpoint, resume, overwrite
        self.main, self.write = main, write

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.overwrite and not self.resume:
            clear_run(self.out)  # an old checkpoint must never be resumed into the new run
        if self.resume:
            forget_after(self.out, self.checkpoint)
        self.write()
