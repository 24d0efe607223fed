"""``--push-to-hub REPO``: upload a run's ``model/`` folder (weights, tokenizer, model card) to a
Hugging Face Hub model repository at the end of `tidpo train`.

`check_push` runs with the other checks before any work, so a push that cannot happen stops the
run at once, not after hours of training: the repository id must be valid, the hub must not be
switched off (``HF_HUB_OFFLINE=1``) and a token must be available (``HF_TOKEN`` or ``hf auth
login``). Whether the token may write to the repository is only known when the hub answers:
`push_model` turns a failed push into one line that says the model is saved and how to upload it
by hand. Nothing here reaches the network except `push_model`, through `huggingface_hub.HfApi`.
"""

from __future__ import annotations

from pathlib import Path

from tidpo.errors import TidpoError

__all__ = ["HubError", "check_push", "push_model"]


class HubError(TidpoError):
    """``--push-to-hub`` cannot or could not upload the model."""


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
