"""A run's settings, merged in one place: the job defaults, a YAML file, ``--set`` and flags.

`resolve_options` merges a YAML config file, ``--set FIELD=VALUE`` items and a command's flags
into `RunOptions` (where model and data come from, the run folder, LoRA, resume) holding the
`TIDPOConfig` values the user set; `build_config` makes the `TIDPOConfig` from them and the job
defaults (`DEFAULTS`: the 10-minute default job), which the preset's values override
(`TIDPOConfig.with_defaults`): the user's values win over both. Every value is checked against
its field's type first (`check_value`), so a bad one stops the run with one line naming the
field.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from tidpo.errors import TidpoError
from tidpo.extras import MissingExtraError, missing_message, tensorboard_available
from tidpo.training.config import TIDPOConfig
from tidpo.training.trl_compat import TRL_KEYS, translate_trl
from tidpo.training.values import as_number, type_problem

__all__ = ["DEFAULTS", "RUN_KEYS", "RunError", "RunOptions", "build_config", "check_value",
           "load_yaml_config", "parse_set", "resolve_options"]  # fmt: skip

# The default job: SmolLM2-135M on the bundled data, sized to finish within 10 minutes on 2 cores.
DEFAULTS: dict[str, Any] = {
    "max_steps": 30,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-5,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 2,
    "max_length": 160,
    "anchor_max_new_tokens": 24,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 10,
    "save_total_limit": 1,
    "seed": 42,
    "report_to": ["tensorboard"],  # "none" when tensorboard (tidpo[tensorboard]) is missing
}


class RunError(TidpoError):
    """A run cannot start (bad option, occupied output folder, ...)."""


@dataclasses.dataclass
class RunOptions:
    """What `tidpo train` needs beyond `TIDPOConfig`: where the model and data come from."""

    model: str | None = None
    """A local model folder or ``.gguf`` file, a hub id ``ORG/NAME``, or None (the default)."""
    model_revision: str | None = None
    """The hub revision (branch, tag or commit) of a hub ``model``; TRL's ``model_revision``."""
    dataset: str | None = None
    """A local preference file or folder, or a hub dataset id ``ORG/NAME``."""
    dataset_config: str | None = None
    """The configuration (subset) of a hub ``dataset``; TRL's ``dataset_config``."""
    dataset_train_split: str | None = None
    """The split of a hub ``dataset`` to train on (default ``train``); TRL's key."""
    dataset_test_split: str | None = None
    """The split the run report evaluates on (TRL's key): of ``eval_dataset`` when that is a hub
    id, else of a hub ``dataset`` (default: the bundled test set)."""
    output_dir: str | None = None
    name: str | None = None
    lora: bool = False
    lora_r: int = 16
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    report: bool = True
    eval_dataset: str | None = None
    columns: str | None = None
    """``--dataset``'s own column names: ``"prompt=question,chosen=good,rejected=bad"``."""
    push_to_hub: str | None = None
    """A hub model repository (``name`` or ``namespace/name``) that ``model/`` is uploaded to at
    the end of training (`tidpo.training.hub`); None: nothing is uploaded."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """`TIDPOConfig` fields (and so any ``TrainingArguments`` option) set by the user."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What merging the settings changed or ignored (a TRL config's fields), one line each."""

    def output_path(self) -> Path:
        """``output_dir``, else ``runs/<name>`` (a time-stamped name when none is given)."""
        if self.output_dir:
            return Path(self.output_dir)
        return Path("runs") / (self.name or time.strftime("tidpo-%Y%m%d-%H%M%S"))


RUN_KEYS = frozenset(f.name for f in dataclasses.fields(RunOptions)) - {"config", "notes"}
"""Keys of a YAML config (and flags) that are no `TIDPOConfig` field (or, as ``push_to_hub``,
are taken from the Trainer): where model and data come from, the run folder, LoRA, resume, the
report and the hub repository."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise RunError(f"line {line}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TIDPOConfig)}


def load_yaml_config(path: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """Read ``--config FILE.yaml``: `TIDPOConfig` fields plus the run keys (`RUN_KEYS`), each
    checked (`check_value`); a key given twice is an error, not "the last one wins". A TRL
    `DPOConfig` file is translated first (`tidpo.training.trl_compat`; its notes are appended to
    ``notes``)."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise RunError(f"{path}: config file not found") from None
    except RunError as err:  # a key given twice
        raise RunError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RunError(f"{where}: invalid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a mapping of option: value")
    if TRL_KEYS & set(data):
        try:
            data, trl_notes = translate_trl(data)
        except TidpoError as err:
            raise RunError(f"{path}: {err}") from None
        if notes is not None:
            notes += [f"{path}: {note}" for note in trl_notes]
    try:
        data = _hub_keys(data, notes)
    except RunError as err:
        raise RunError(f"{path}: {err}") from None
    for key, value in data.items():
        try:
            data[key] = check_value(str(key), value)
        except RunError as err:
            raise RunError(f"{path}: {err}") from None
    return data


def _hub_keys(data: dict[str, Any], notes: list[str] | None) -> dict[str, Any]:
    """``TrainingArguments``' ``push_to_hub: true`` + ``hub_model_id: REPO`` (a TRL config's way)
    as tidpo's ``push_to_hub: REPO``: tidpo uploads the final ``model/`` with its model card, and
    the Trainer never pushes checkpoints. ``push_to_hub: false`` is dropped."""
    flag = data.get("push_to_hub")
    if not isinstance(flag, bool):
        return data
    out = {k: v for k, v in data.items() if k != "push_to_hub"}
    if not flag:
        return out
    repo = out.pop("hub_model_id", None)
    if not repo:
        raise RunError("push_to_hub: true needs hub_model_id (the repository), or give the "
                       "repository itself: push_to_hub: you/my-model")  # fmt: skip
    out["push_to_hub"] = repo
    if notes is not None:
        notes.append(f"push_to_hub=true, hub_model_id={repo!r} -> push_to_hub={repo!r} (tidpo "
                     "uploads model/ with its model card at the end of training)")  # fmt: skip
    return out


@functools.cache
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TIDPOConfig)
    run = typing.get_type_hints(RunOptions)
    return {**{k: hints[k] for k in _config_fields()}, **{k: run[k] for k in RUN_KEYS}}


def check_value(key: str, value: Any) -> Any:
    """``value`` checked for the config field or run key ``key`` (and read as a number where
    text such as ``2e-5`` stands for one); raises `RunError` naming ``key`` when it is no field
    or ``value`` has the wrong type or is not finite (`tidpo.training.values.type_problem`);
    values of other types (enums, lists) are left to `TIDPOConfig`.
    """
    hints = _field_types()
    if key not in hints:
        raise RunError(f"unknown config key {key!r}")
    value = as_number(hints[key], value)
    problem = type_problem(key, hints[key], value)
    if problem:
        raise RunError(problem)
    return value


def parse_set(item: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` of ``--set``: the value read as YAML, checked for the field."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RunError(f"--set {item!r}: expected FIELD=VALUE")
    parsed = yaml.safe_load(raw)
    # YAML 1.1 reads "no"/"yes"/"on"/"off" as booleans; keep those words as text.
    if isinstance(parsed, bool) and raw.strip().lower() not in ("true", "false"):
        parsed = raw.strip()
    try:
        return key.strip(), check_value(key.strip(), parsed)
    except RunError as err:
        raise RunError(f"--set {item}: {err}") from None


def resolve_options(
    config_file: Path | None, sets: Sequence[str], flags: Mapping[str, Any]
) -> RunOptions:
    """The one place a run's settings are merged: the YAML file, then ``--set FIELD=VALUE``, then
    the command's flags (those given: not None). Run keys (`RUN_KEYS`: model, dataset,
    ``resume``, ...) become `RunOptions` fields, everything else its ``config``."""
    notes: list[str] = []
    values: dict[str, Any] = load_yaml_config(config_file, notes) if config_file else {}
    for item in sets:
        key, value = parse_set(item)
        values[key] = value
    for key, value in flags.items():
        if value is not None:
            values[key] = check_value(key, value)
    run = {key: values.pop(key) for key in list(values) if key in RUN_KEYS}
    if "report_to" not in values and not tensorboard_available():
        notes.append("note: no tensorboard logs (tb/): "
                     + missing_message("logging them", "tensorboard"))  # fmt: skip
    return RunOptions(**run, config=values, notes=notes)


def _check_report_to(value: Any) -> None:
    """``report_to`` naming tensorboard needs it installed: one line now, not a Trainer error."""
    names = [value] if isinstance(value, str) else list(value or [])
    if "tensorboard" in names and not tensorboard_available():
        raise MissingExtraError(missing_message("report_to=tensorboard", "tensorboard"))


def build_config(opts: RunOptions, output_dir: Path) -> TIDPOConfig:
    """DEFAULTS, then the preset's values, then the user's (`TIDPOConfig.with_defaults`);
    `TIDPOConfig` validates and names bad fields."""
    user = {key: check_value(key, value) for key, value in opts.config.items()}
    _check_report_to(user.get("report_to"))
    defaults = DEFAULTS if tensorboard_available() else {**DEFAULTS, "report_to": "none"}
    if not torch.cuda.is_available():
        user["use_cpu"] = True
    user["output_dir"] = str(output_dir)
    try:
        return TIDPOConfig.with_defaults(defaults, **user)
    except TidpoError:
        raise
    except (ValueError, TypeError) as err:  # TrainingArguments' own checks
        raise RunError(f"config: {str(err).splitlines()[0]}") from err
