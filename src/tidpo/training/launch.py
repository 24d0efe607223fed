"""`tidpo train --num-processes N`: re-launch the same command under ``accelerate launch``.

The parent process checks what it can first (output folder, configuration, model path, data
file), so bad input still gives one line and exit code 2 before any process starts; then it runs
``python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m tidpo train <the same
options>`` and waits. ``--multi_gpu`` selects accelerate's torchrun launcher, which also starts N
processes on a CPU-only machine (``accelerate launch --cpu`` with N > 1 starts one process unless
an MPI hostfile is given); there each process sees ``ACCELERATE_USE_CPU`` and ``use_cpu`` and
joins a gloo process group. ``--sharding fsdp2`` / ``zero3`` replace ``--multi_gpu`` with
accelerate's FSDP2 / DeepSpeed ZeRO-3 flags (the settings of ``configs/accelerate/fsdp2.yaml`` and
``deepspeed_zero3.yaml``, which keep working with ``accelerate launch --config_file``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from tidpo.errors import TidpoError

if TYPE_CHECKING:
    from tidpo.training.run import RunOptions

__all__ = ["SHARDING_FLAGS", "LaunchError", "in_launched_process", "launch_command",
           "rebuild_argv", "relaunch"]  # fmt: skip

SHARDING_FLAGS: dict[str, list[str]] = {
    "ddp": ["--multi_gpu"],
    # one shard group per decoder layer (the model's _no_split_modules), full state dict on save
    "fsdp2": ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy",
              "TRANSFORMER_BASED_WRAP", "--fsdp_reshard_after_forward", "true",
              "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_offload_params", "false",
              "--fsdp_cpu_ram_efficient_loading", "false"],
    # the policy loaded whole in each process (its frozen reference copied before sharding),
    # 16-bit weights gathered for checkpoints and model/
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "false",
              "--zero3_save_16bit_model", "true", "--offload_optimizer_device", "none",
              "--offload_param_device", "none"],
}  # fmt: skip
"""``tidpo train --sharding``: accelerate launch's flags for each engine."""


class LaunchError(TidpoError):
    """The multi-process run could not start, or one of its processes failed."""


def in_launched_process() -> bool:
    """Whether this process was started by accelerate launch / torchrun (``WORLD_SIZE`` set)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def rebuild_argv(ctx: Any, drop: set[str]) -> list[str]:
    """The options given on the command line of ``ctx``'s command (a click/typer context).

    Options left at their defaults are not repeated; those named in ``drop`` are left out.
    (Typer vendors its own click, so parameters are read by duck typing, not isinstance.)
    """
    argv: list[str] = []
    for param in ctx.command.params:
        name, opts = param.name, getattr(param, "opts", None)
        if name is None or name in drop or not opts or not opts[0].startswith("-"):
            continue
        if getattr(ctx.get_parameter_source(name), "name", None) != "COMMANDLINE":
            continue
        value = ctx.params[name]
        if getattr(param, "is_flag", False):
            if value:
                argv.append(opts[0])
            elif param.secondary_opts:
                argv.append(param.secondary_opts[0])
        elif getattr(param, "multiple", False):
            for item in value or ():
                argv += [opts[0], str(item)]
        elif value is not None:
            argv += [opts[0], str(value)]
    return argv


def launch_command(num_processes: int, train_args: list[str], sharding: str = "ddp") -> list[str]:
    """``accelerate launch`` command line running ``tidpo train train_args`` in N processes,
    the weights replicated (``ddp``) or sharded (``fsdp2``, ``zero3``)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", *SHARDING_FLAGS[sharding],
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no",  # tidpo's own bf16 field decides (TrainingArguments)
        "--dynamo_backend", "no",
        "--main_process_port", "0",  # a free port: several runs may share a machine
        "-m", "tidpo", "train", *train_args,
    ]  # fmt: skip


def relaunch(
    opts: RunOptions, num_processes: int, train_args: list[str], sharding: str = "ddp"
) -> None:
    """Check the run, then train it in ``num_processes`` processes; raise if any of them fails."""
    import importlib.util

    import torch

    if sharding == "zero3" and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError("--sharding zero3 needs DeepSpeed: pip install deepspeed")

    from tidpo.training.run import check_run, load_training_rows

    _, _, _, data_path = check_run(opts)
    # A bad row stops here, before N processes start (and a hub dataset is cached for them).
    load_training_rows(opts, data_path)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        if sharding != "zero3":  # DeepSpeed brings its own CPU accelerator; use_cpu turns it off
            env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    cmd = launch_command(num_processes, train_args, sharding)
    try:
        code = subprocess.run(cmd, env=env, check=False).returncode
    except OSError as err:
        raise LaunchError(f"cannot start accelerate launch: {err}") from None
    if code != 0:
        raise LaunchError(
            f"the {num_processes}-process run failed (exit code {code}); "
            "the processes' own messages are above"
        )
