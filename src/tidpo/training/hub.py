"""The Hugging Face Hub: models named ``ORG/NAME`` (`fetch_model`) and ``--push-to-hub``.

`fetch_model` brings the files ``from_pretrained`` reads (config, tokenizer, chat template,
the one weight format it would load) of a hub model into the Hugging Face cache (``HF_HOME``) and
returns that snapshot folder, so a hub model is then a local folder like any other; with
``HF_HUB_OFFLINE=1`` (or the hub unreachable) the cached snapshot is used. ``HF_TOKEN`` (or ``hf
auth login``) and ``HF_ENDPOINT`` work as everywhere in the Hugging Face libraries. A missing id,
revision or cache entry, or a network failure, is one line (`tidpo.errors.TidpoError`).

``--push-to-hub REPO`` uploads a run's ``model/`` folder (weights, tokenizer, model card) to a
Hugging Face Hub model repository at the end of `tidpo train`.

`check_push` runs with the other checks before any work, so a push that cannot happen stops the
run at once, not after hours of training: the repository id must be valid, the hub must not be
switched off (``HF_HUB_OFFLINE=1``) and a token must be available (``HF_TOKEN`` or ``hf auth
login``). Whether the token may write to the repository is only known when the hub answers:
`push_model` turns a failed push into one line that says the model is saved and how to upload it
by hand.
"""

from __future__ import annotations

from pathlib import Path

from tidpo.errors import TidpoError

__all__ = ["HubError", "check_push", "fetch_model", "model_files", "push_model"]


class HubError(TidpoError):
    """A hub model cannot be fetched, or ``--push-to-hub`` cannot or could not upload one."""


_SMALL = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py")
"""Top-level files of a model repository that ``from_pretrained`` may read besides weights:
configs, tokenizer files, chat templates, model code (used only with trust_remote_code)."""
_WEIGHTS = (
    ("model.safetensors", "", ""),
    ("model.safetensors.index.json", "model-", ".safetensors"),
    ("pytorch_model.bin", "", ""),
    ("pytorch_model.bin.index.json", "pytorch_model-", ".bin"),
)
"""transformers' weight files, in the order it prefers them: one file, or an index and shards."""


def model_files(names: list[str]) -> list[str]:
    """Of a model repository's files, those ``from_pretrained`` reads: the small top-level files
    (`_SMALL`, ``README.md``, ``LICENSE``), ``additional_chat_templates/`` and one weight format
    (safetensors before ``.bin``; not GGUF, ONNX or ``original/`` copies)."""
    top = [n for n in names if "/" not in n]
    keep = [n for n in top if n.endswith(_SMALL) or n.startswith(("README", "LICENSE"))]
    keep += [n for n in names if n.startswith("additional_chat_templates/")]
    for first, prefix, suffix in _WEIGHTS:
        if first in top:
            shards = [n for n in top if prefix and n.startswith(prefix) and n.endswith(suffix)]
            return sorted({*keep, first, *shards})
    return sorted(keep)


def _reason(err: BaseException) -> str:
    """The message of the first cause of ``err`` (a refused connection, not its wrappers)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def fetch_model(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of the hub model ``repo_id`` at ``revision`` (default: main),
    downloading the files `model_files` picks unless they are cached (module docstring).

    Raises `HubError` (one line) when the id or revision does not exist, or the model is neither
    reachable nor cached."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        DryRunError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" (revision {revision})" if revision else ""
    offline = constants.is_offline_mode()
    files: list[str] | None = None
    unreachable: BaseException | None = None
    try:
        if not offline:
            try:
                listing = snapshot_download(repo_id, revision=revision, dry_run=True)
                files = model_files([f.filename for f in listing])
            except DryRunError as err:  # not reachable, or refused: the cache may still have it
                if isinstance(err.__cause__, RepositoryNotFoundError):
                    raise err.__cause__ from None
                unreachable = err
        path = snapshot_download(repo_id, revision=revision, allow_patterns=files or "config.json",
                                 local_files_only=files is None)  # fmt: skip
    except GatedRepoError:
        raise HubError(f"model {repo_id}: a gated model; accept its terms on huggingface.co and "
                       "set HF_TOKEN (or run `hf auth login`)") from None  # fmt: skip
    except RepositoryNotFoundError:
        raise HubError(f"model {repo_id}: no such local folder, and no model {repo_id} on the "
                       "Hugging Face Hub (a private model needs HF_TOKEN or `hf auth login`)"
                       ) from None  # fmt: skip
    except RevisionNotFoundError:
        raise HubError(f"model {repo_id}: no revision {revision!r} on the Hugging Face Hub"
                       ) from None  # fmt: skip
    except LocalEntryNotFoundError:
        why = (" (HF_HUB_OFFLINE is set)" if offline else
               f"; the Hugging Face Hub cannot be reached ({_reason(unreachable)})"
               if unreachable is not None else "; the download did not complete")  # fmt: skip
        raise HubError(f"model {repo_id}{at}: no such local folder, and not in the Hugging Face "
                       f"cache ({constants.HF_HUB_CACHE}){why}") from None  # fmt: skip
    except (HfHubHTTPError, OSError) as err:
        raise HubError(f"model {repo_id}{at}: the download failed ({_reason(err)})") from None
    return Path(path)


def check_push(repo_id: str) -> None:
    """Raise `HubError` (one line naming ``--push-to-hub``) unless ``repo_id`` is a valid model
    repository id (``name`` or ``namespace/name``), the hub is not switched off and a token is
    available. Reaches no network."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"--push-to-hub {repo_id!r}: not a repository id ({err})") from None
    if constants.is_offline_mode():
        raise HubError(f"--push-to-hub {repo_id}: the hub is switched off (HF_HUB_OFFLINE is "
                       "set); unset HF_HUB_OFFLINE or leave out --push-to-hub")  # fmt: skip
    if not get_token():
        raise HubError(f"--push-to-hub {repo_id}: no Hugging Face token (set HF_TOKEN or run "
                       "`hf auth login`), or leave out --push-to-hub")  # fmt: skip


def push_model(folder: Path, repo_id: str, message: str) -> str:
    """Create the model repository ``repo_id`` if it does not exist and upload every file of
    ``folder`` to it in one commit; returns the repository's URL.

    Raises `HubError` when the hub refuses or cannot be reached; the message says that the
    folder is intact and gives the command that uploads it later.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                          commit_message=message)  # fmt: skip
    except Exception as err:  # HTTP errors, refused metadata (ValueError), connection errors
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise HubError(
            f"--push-to-hub {repo_id}: the upload failed ({reason}); the model is saved in "
            f"{folder}: upload it later with `hf upload {repo_id} {folder}`"
        ) from err
    return str(url)
