"""Publishing a model folder to the Hugging Face Hub: the checks worth making before a long merge, then the upload;
every failure becomes one line naming the repo."""

from __future__ import annotations

import logging
from pathlib import Path

from moemerge.errors import ConfigError, MoemergeError, PushError

log = logging.getLogger(__name__)
OFFLINE = ("HF_HUB_OFFLINE=1 is set, so the Hugging Face client makes no network calls: unset it (`unset "
           "HF_HUB_OFFLINE`) to push {repo}")  # fmt: skip

# above this, upload_large_folder (resumable, several commits) where huggingface_hub < 2 has it; 2.x removed it and
# its upload_folder handles large folders itself
LARGE_UPLOAD_BYTES = 50 * 10**9


def _push_error(repo_id: str, exc: Exception) -> MoemergeError:
    from huggingface_hub import errors

    match exc:
        case errors.OfflineModeIsEnabled():
            return PushError(OFFLINE.format(repo=repo_id))
        case errors.HfHubHTTPError() if exc.response is not None and exc.response.status_code in (401, 403):
            return PushError(f"the Hub refused {repo_id}: your token lacks write access to it (check the name and "
                             "the token's permissions)")  # fmt: skip
        case errors.HfHubHTTPError():
            return PushError(f"the Hub rejected the upload to {repo_id} ({str(exc).splitlines()[0][:200]})")
        case _ if isinstance(exc, OSError) or "connect" in exc.__class__.__name__.lower():
            return PushError(f"cannot reach the Hugging Face Hub to push {repo_id}: check the network (or HF_ENDPOINT)")
    return PushError(f"push to {repo_id} failed ({exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]})")


def check_push(repo_id: str, token: str | None = None) -> None:
    """What can be known before a long merge: the repo name is valid, the client is not offline, a token is there."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = "/" in repo_id
    except HFValidationError:
        valid = False
    if not valid:
        raise ConfigError(f"'{repo_id}' is not a valid Hub repo name: use 'user/name' (letters, digits, -, _, .)")
    if constants.HF_HUB_OFFLINE:
        raise PushError(OFFLINE.format(repo=repo_id))
    if not (token or get_token()):
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")


def push(folder: Path, repo_id: str, *, private: bool, revision: str | None, message: str | None,
         token: str | None = None) -> str:  # fmt: skip
    """Create `repo_id` if needed and upload `folder` to it; returns the repo's URL. The token comes from `token` (the
    web page's field, for this push only), else HF_TOKEN or the user's login; it is never printed, logged or written."""
    from huggingface_hub import HfApi

    check_push(repo_id, token)
    api = HfApi(token=token)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        large = size > LARGE_UPLOAD_BYTES and hasattr(api, "upload_large_folder")  # huggingface_hub 2.x: upload_folder
        if large and message:
            log.warning("--commit-message given: uploading in one commit (upload_folder), since the resumable "
                        "upload_large_folder takes no commit message; leave the message out for a resumable upload")  # fmt: skip
        if large and not message:
            api.upload_large_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
                                    private=private)  # fmt: skip
        else:
            api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                              commit_message=message or "Upload MoE model built with moemerge")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one line naming the repo
        raise _push_error(repo_id, exc) from None
    return str(url)
