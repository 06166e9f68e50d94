"""The Hugging Face Hub side: fetch only the files a merge needs (config, tokenizer, the shards holding wanted tensors)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from moemerge.errors import MoemergeError, SourceError
from moemerge.sources.headers import read_json
from moemerge.sources.hub_reach import CACHE, HubUnreachableError, reachable

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
SIDE_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def looks_like_hub_id(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and ".." not in ref


def split_ref(ref: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`)."""
    repo_id, _, revision = ref.partition("@")
    return repo_id, revision or None


def _explain(ref: str, exc: Exception) -> MoemergeError:
    from huggingface_hub import errors

    match exc:
        case MoemergeError():
            return exc  # already says what failed (an unreachable Hub ends the run as it is)
        case errors.GatedRepoError():
            why = "is gated: accept its licence on the Hub and log in (`hf auth login`)"
        case errors.RepositoryNotFoundError():
            why = "is neither a local folder nor a model on the Hub (check the path or id; log in for private repos)"
        case errors.RevisionNotFoundError():
            why = "names a revision the Hub does not have"
        case errors.LocalEntryNotFoundError() | errors.OfflineModeIsEnabled():
            why = "is not a local folder, and its files are not in the Hugging Face cache while the Hub is offline"
        case _:
            why = f"could not be fetched from the Hub ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})"
    return SourceError(f"model '{ref}' {why}")


def _download(repo_id: str, filename: str, revision: str | None, *, optional: bool = True) -> Path | None:
    """One file from the Hub (or the user's HF cache); None when an optional file is absent (or uncached offline).
    With the Hub unreachable, only cached files are used and the first uncached one ends the run."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    use_hub = _offline() or reachable(repo_id, filename, revision)  # offline: huggingface_hub reads its cache
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=CACHE["dir"],
                                    local_files_only=not use_hub))  # fmt: skip
    except (EntryNotFoundError, LocalEntryNotFoundError):
        if not use_hub and not optional:
            raise HubUnreachableError(f"cannot reach the Hugging Face Hub at {CACHE['unreachable']} to fetch "
                                      f"{repo_id}; with HF_HUB_OFFLINE=1 moemerge uses only the local cache") from None  # fmt: skip
        if optional:
            return None
        raise


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_model(ref: str, *, wanted: Callable[[str], bool], side_files: bool) -> tuple[Path, str | None]:
    """Download what a merge needs from `org/name[@revision]`; returns (snapshot folder, commit hash)."""
    repo_id, revision = split_ref(ref)
    try:
        config = _download(repo_id, "config.json", revision, optional=False)
        commit = config.parent.name  # the cache keeps files under snapshots/<commit>/
        for index_name, single_name in WEIGHT_LAYOUTS:
            index = _download(repo_id, index_name, commit)
            if index is not None:
                weight_map = read_json(index)["weight_map"]
                shards = sorted({file for name, file in weight_map.items() if wanted(name)})
                if any(not isinstance(f, str) or Path(f).name != f or f in (".", "..") for f in shards):
                    raise SourceError(f"model '{ref}': its index names files outside the repo; refusing it")
                break
            if _download(repo_id, single_name, commit) is not None:
                shards = []
                break
        else:
            if _offline():
                raise SourceError(f"model '{ref}': its weights are not in the Hugging Face cache and HF_HUB_OFFLINE=1 "
                                  "is set; run once online (or unset HF_HUB_OFFLINE)")  # fmt: skip
            raise SourceError(f"model '{ref}' has no safetensors or pytorch_model.bin weights on the Hub")
        for shard in shards:
            log.info("downloading %s from %s", shard, repo_id)
            _download(repo_id, shard, commit, optional=False)
        if side_files:
            for name in (*SIDE_FILES, "README.md"):  # README.md: only read for the base's license, never copied
                _download(repo_id, name, commit)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - every Hub/network failure becomes one line naming the model
        raise _explain(ref, exc) from None
    return config.parent, commit


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def fetch_adapter(ref: str) -> tuple[Path, str | None]:
    """Download a PEFT adapter's own files only (adapter_config.json, then its safetensors or, failing that, .bin
    weights) from `org/name[@revision]`; returns (snapshot folder, commit hash)."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    repo_id, revision = split_ref(ref)
    try:
        config = _download(repo_id, ADAPTER_CONFIG, revision, optional=False)
        commit = config.parent.name
        if not any(_download(repo_id, name, commit) is not None for name in ADAPTER_WEIGHTS):  # stops at the first
            where = "in the Hugging Face cache (HF_HUB_OFFLINE=1 is set)" if _offline() else "on the Hub"
            raise SourceError(f"adapter '{ref}' has no {' or '.join(ADAPTER_WEIGHTS)} {where}")
    except SourceError:
        raise
    except RemoteEntryNotFoundError:
        raise SourceError(f"adapter '{ref}' has no {ADAPTER_CONFIG} on the Hub: not a PEFT adapter") from None
    except Exception as exc:  # noqa: BLE001 - every Hub/network failure becomes one line naming the adapter
        raise _explain(ref, exc) from None
    return config.parent, commit


def remote_adapter(ref: str) -> tuple[Path, str | None, dict[str, tuple[str, list[int], int]], int]:
    """For a dry run: adapter_config.json (downloaded; it is small) and the adapter weights' header, read remotely.
    Returns (config folder, commit, {tensor: (dtype code, shape, start)}, bytes of weights not in the cache)."""
    from huggingface_hub import HfApi

    repo_id, revision = split_ref(ref)
    try:
        config = _download(repo_id, ADAPTER_CONFIG, revision, optional=False)
        commit = config.parent.name
        meta = HfApi().parse_safetensors_file_metadata(repo_id, ADAPTER_WEIGHTS[0], revision=commit)
    except Exception as exc:  # noqa: BLE001 - every Hub/network failure becomes one line naming the adapter
        if exc.__class__.__name__ in ("RemoteEntryNotFoundError", "SafetensorsParsingError"):
            raise SourceError(f"adapter '{ref}' has no {ADAPTER_WEIGHTS[0]} on the Hub, so `plan` cannot read its "
                              "header remotely; the merge itself also reads adapter_model.bin") from None  # fmt: skip
        raise _explain(ref, exc) from None
    header = {name: (t.dtype, list(t.shape), t.data_offsets[0]) for name, t in meta.tensors.items()}
    size = max((t.data_offsets[1] for t in meta.tensors.values()), default=0)
    return config.parent, commit, header, missing_bytes(ref, commit, {ADAPTER_WEIGHTS[0]: size})


def remote_headers(ref: str) -> tuple[Path, str | None, dict[str, dict[str, tuple[str, list[int], int]]]]:
    """For a dry run: config.json (downloaded; it is small) and every safetensors header, read remotely with range
    requests (no weights downloaded). Returns (config folder, commit, {file: {tensor: (dtype code, shape, start)}})."""
    from huggingface_hub import HfApi, errors

    repo_id, revision = split_ref(ref)
    try:
        config = _download(repo_id, "config.json", revision, optional=False)
        commit = config.parent.name
        metadata = HfApi().get_safetensors_metadata(repo_id, revision=commit)
    except errors.NotASafetensorsRepoError:
        raise SourceError(f"model '{ref}' has no safetensors weights on the Hub, so `plan` cannot read its headers "
                          "remotely; the merge itself reads pytorch_model.bin files") from None  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - every Hub/network failure becomes one line naming the model
        raise _explain(ref, exc) from None
    files = {file: {name: (t.dtype, list(t.shape), t.data_offsets[0]) for name, t in meta.tensors.items()}
             for file, meta in metadata.files_metadata.items()}  # fmt: skip
    return config.parent, commit, files


def missing_bytes(ref: str, commit: str | None, sizes: dict[str, int]) -> int:
    """Bytes of `sizes` ({file: bytes}) not yet in the user's Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _ = split_ref(ref)
    return sum(size for file, size in sizes.items()
               if not isinstance(try_to_load_from_cache(repo_id, file, revision=commit), str))  # fmt: skip
