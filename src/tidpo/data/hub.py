"""Preference data from the Hugging Face Hub: ``ORG/NAME`` ids read through `datasets.load_dataset`.

A dataset (``--dataset``, `tidpo.data.load_preferences`) that names an existing local path is a
file or folder; otherwise a string shaped ``ORG/NAME`` is a hub id (`hub_id`, the same rule as
`tidpo.training.models.resolve_model` for models). `load_hub_dataset` reads one split of it with
``datasets.load_dataset`` and TRL's keys (``dataset_config``, ``dataset_train_split`` /
``dataset_test_split``, a revision): downloaded once into datasets' cache (``HF_HOME``), read from
that cache under ``HF_HUB_OFFLINE=1``. ``HF_ENDPOINT`` and ``HF_TOKEN`` (or ``hf auth login``)
work as everywhere in the Hugging Face libraries. Every failure (no such dataset, split or
config; the hub unreachable and nothing cached) is a `DataError`: one line naming the id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tidpo.data.columns import DataError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["hub_id", "load_hub_dataset"]

_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv", ".txt", ".gguf",
                  ".yaml", ".yml", ".safetensors", ".bin")  # fmt: skip
"""A missing ``dir/file.jsonl`` is a missing file, not a hub id."""


def hub_id(source: str | os.PathLike[str] | None) -> str | None:
    """``source`` as a Hugging Face Hub repository id, or None when it is a local path.

    An existing local path always wins. Otherwise ``ORG/NAME`` (one slash, the hub's characters:
    letters, digits, ``-``, ``_``, ``.``) is an id, unless it ends like a file (``.jsonl``,
    ``.gguf``, ...), which is taken for a missing file.
    """
    if source is None:
        return None
    text = os.fspath(source)
    if not text or text.count("/") != 1 or Path(text).expanduser().exists():
        return None
    if text.lower().endswith(_FILE_SUFFIXES) or text.startswith((".", "~", "-")):
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


def _why_unreachable() -> str:
    from datasets import config

    if getattr(config, "HF_HUB_OFFLINE", None) or getattr(config, "HF_DATASETS_OFFLINE", None):
        return " (HF_HUB_OFFLINE is set)"
    return f"; the Hugging Face Hub ({config.HF_ENDPOINT}) cannot be reached"


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def load_hub_dataset(
    repo_id: str,
    *,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
) -> Dataset:
    """Split ``split`` of the hub dataset ``repo_id`` (configuration ``config``, at ``revision``)
    as ``datasets.load_dataset`` returns it; raises `DataError` (one line naming the id)."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    label = f"{repo_id} ({config})" if config else repo_id
    try:
        try:
            ds = load_dataset(repo_id, config, split=split, revision=revision)
        except ValueError as err:  # offline, datasets will not pick among cached configurations
            if config is not None or "multiple" not in str(err) or "default" not in str(err):
                raise
            ds = load_dataset(repo_id, "default", split=split, revision=revision)
    except DatasetNotFoundError as err:  # no such id or revision
        raise DataError(f"dataset {repo_id}: no such local file, and {_reason(err)} (a private "
                        "or gated dataset needs HF_TOKEN or `hf auth login`)"
                        ) from None  # fmt: skip
    except ConnectionError:  # offline, or the hub unreachable, and nothing in the cache
        raise DataError(f"dataset {repo_id}: no such local file, and not in the datasets cache"
                        f"{_why_unreachable()}") from None  # fmt: skip
    except (OSError, ValueError) as err:  # no such split or config, no data files, HTTP errors
        raise DataError(f"dataset {label}, split {split!r}: {_reason(err)}") from None
    from datasets import Dataset

    if not isinstance(ds, Dataset):  # load_dataset(split=...) returns a Dataset
        raise DataError(f"dataset {label}: split {split!r} is not one table")
    return ds
