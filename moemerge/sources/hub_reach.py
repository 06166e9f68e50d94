"""How moemerge reaches the Hugging Face Hub: the download folder (mergekit's --transformers-cache) and whether the
Hub answers at all, found with one request so that an unreachable Hub ends the run at once instead of retrying."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from moemerge.errors import MoemergeError

# --transformers-cache: where downloads go (default: the HF cache); why the Hub is unreachable, once a request failed
CACHE: dict[str, Any] = {"dir": None, "unreachable": None}


def use_cache(folder: Path) -> None:
    """Download into `folder` instead of the Hugging Face cache (mergekit-moe's --transformers-cache)."""
    CACHE["dir"] = Path(folder).expanduser()


class HubUnreachableError(MoemergeError, ConnectionError):
    """The Hub cannot be reached: ends the run at the first failure (not one retrying download per model)."""

    exit_code = 1


def reachable(repo_id: str, filename: str, revision: str | None) -> bool:
    """One HEAD request without retries (huggingface_hub would retry a failed download for about 25 s, printing each
    try); False when the Hub cannot be reached, and from then on for the rest of the run."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    if CACHE["unreachable"] is None:
        url = hf_hub_url(repo_id, filename, revision=revision)
        hf_logger = logging.getLogger("huggingface_hub")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)  # its "... thrown while requesting HEAD" lines: we say it once, below
        try:
            get_hf_file_metadata(url, timeout=min(constants.HF_HUB_ETAG_TIMEOUT, 10))
        except HfHubHTTPError:
            pass  # the Hub answered (404, 401, ...): the download below reports it
        except Exception as exc:  # noqa: BLE001 - connection refused, DNS, timeouts, TLS: the network's failures
            CACHE["unreachable"] = f"{constants.ENDPOINT} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})"
        finally:
            hf_logger.setLevel(level)
    return CACHE["unreachable"] is None
