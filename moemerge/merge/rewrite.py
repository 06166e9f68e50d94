"""New values for some tensors (the routers) of a written checkpoint: only their bytes change. `patch` edits a folder
nobody reads yet; `replace` updates a finished one crash-safely (a copy beside it, swapped in with one atomic rename)."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moemerge.errors import MergeFailedError, OutputError
from moemerge.merge import output
from moemerge.sources.folder import TensorInfo, read_safetensors_header
from moemerge.sources.headers import read_json

log = logging.getLogger(__name__)
INDEX = "model.safetensors.index.json"
RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically


def locate(folder: Path, names: list[str]) -> dict[str, TensorInfo]:
    """Where each named tensor's bytes are in the folder's safetensors files (from the index and headers)."""
    if (folder / INDEX).is_file():
        files = {folder / f for f in read_json(folder / INDEX)["weight_map"].values()}
    else:
        files = {folder / "model.safetensors"}
    found: dict[str, TensorInfo] = {}
    for file in sorted(files):
        found.update(read_safetensors_header(file))
    missing = [name for name in names if name not in found]
    if missing:
        raise MergeFailedError(f"{folder}: the checkpoint has no tensor {missing[0]}")
    return {name: found[name] for name in names}


def _payload(info: TensorInfo, tensor: Any) -> bytes:
    """The tensor as stored bytes in the file's dtype; the shape must be the one already there."""
    import torch

    if tuple(tensor.shape) != info.shape:
        raise MergeFailedError(f"new value of shape {tuple(tensor.shape)} for a tensor of shape {info.shape}")
    data = tensor.detach().to("cpu", getattr(torch, info.dtype)).contiguous().reshape(-1)
    return data.view(torch.uint8).numpy().tobytes()


def patch(folder: Path, tensors: dict[str, Any]) -> list[str]:
    """Overwrite the named tensors' bytes in place (the folder must not be in use); returns the files changed."""
    where = locate(folder, list(tensors))
    changed: dict[Path, list[tuple[int, bytes]]] = {}
    for name, tensor in tensors.items():
        info = where[name]
        changed.setdefault(info.file, []).append((info.offset, _payload(info, tensor)))
    for file, edits in changed.items():
        with open(file, "r+b") as fh:
            for offset, data in edits:
                fh.seek(offset)
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return sorted(f.name for f in changed)


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        try:
            os.link(src, dst)  # same bytes, no copy: the file itself is never written
        except OSError:
            shutil.copy2(src, dst)


def _exchange(new: Path, out: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    rename = getattr(libc, "renameat2", None)
    if rename is None:
        return False
    at_cwd = -100
    if rename(at_cwd, os.fsencode(new), at_cwd, os.fsencode(out), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(out))


def replace(folder: Path, tensors: dict[str, Any], *, edited: tuple[str, ...] = (),
            edit: Callable[[Path], None] = lambda folder: None) -> None:  # fmt: skip
    """New tensor values for a finished checkpoint, and `edit(new_folder)` to change the files named in `edited`
    (moemerge.yml, the card, ...), crash-safely.

    A sibling folder gets hard links to every other file, its own copies of the shards that change (then patched) and
    of the edited files; one atomic exchange swaps it with OUT, so a run killed at any point leaves OUT all old or all
    new. Where the system has no atomic exchange, output.publish's two renames (undone by output.recover) are used."""
    folder = output.followed(folder)
    output.recover(folder)
    where = locate(folder, list(tensors))
    shards = {info.file.name for info in where.values()}
    output.check_space(folder, sum((folder / name).stat().st_size for name in shards))
    new = output.temp_folder(folder)
    new.mkdir()
    log.info("copying %s to write the new routers into", ", ".join(sorted(shards)))
    try:
        for entry in sorted(folder.iterdir()):
            if entry.name in shards or (entry.name in edited and entry.is_file()):
                shutil.copyfile(entry, new / entry.name)  # a file of its own: writing it leaves OUT's alone
            else:
                _link_or_copy(entry, new / entry.name)
        edit(new)
        patch(new, tensors)
        for file in new.iterdir():
            if file.is_file() and not file.is_symlink():
                output.fsync(file)
        output.fsync(new)
        log.info("moving the new routers into place")
        if _exchange(new, folder):
            output.fsync(folder.parent)
        else:
            output.publish(new, folder)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{folder.parent}: disk full while writing the new routers; OUT is unchanged") from None
        raise
    finally:
        shutil.rmtree(new, ignore_errors=True)  # after the exchange, this is the old folder
