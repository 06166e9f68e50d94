"""How much memory this process may still use: a cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, the
tightest of the process's cgroup and its ancestors, less what the group already holds that cannot be reclaimed),
available memory, or what --max-memory says; and a GPU's free memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 2**60  # v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class Room:
    bytes: int
    source: str  # what set it, for the line that explains a choice: "cgroup v2 limit", "available memory", ...


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text) if text.isdigit() else None


def _stat(path: Path, *keys: str) -> int:
    """The first of `keys` in a cgroup's memory.stat (page cache it could drop: not in the way of a new load)."""
    try:
        pairs = dict(line.split() for line in path.read_text().splitlines() if line.count(" ") == 1)
    except (OSError, ValueError):
        return 0
    return next((int(pairs[k]) for k in keys if k in pairs and pairs[k].isdigit()), 0)


def _groups(self_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str) -> list[Path]:
    parts = [p for p in path.strip("/").split("/") if p]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_room(root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")) -> Room | None:
    """Bytes the process's memory cgroup still allows (limit - usage + reclaimable cache), tightest over its
    ancestors; None when no limit applies."""
    v2, v1 = _groups(self_cgroup)
    best: Room | None = None
    if v2 is not None and (root / "cgroup.controllers").exists():
        for folder in _ancestors(root, v2):
            limit = _read_int(folder / "memory.max")
            if limit is None or limit >= UNLIMITED:
                continue
            used = (_read_int(folder / "memory.current") or 0) - _stat(folder / "memory.stat", "inactive_file")
            room = Room(max(0, limit - max(used, 0)), "cgroup v2 limit")
            best = room if best is None or room.bytes < best.bytes else best
    if v1 is not None and (root / "memory").is_dir():
        for folder in _ancestors(root / "memory", v1):
            limit = _read_int(folder / "memory.limit_in_bytes")
            if limit is None or limit >= UNLIMITED:
                continue
            cache = _stat(folder / "memory.stat", "total_inactive_file", "inactive_file")
            used = (_read_int(folder / "memory.usage_in_bytes") or 0) - cache
            room = Room(max(0, limit - max(used, 0)), "cgroup v1 limit")
            best = room if best is None or room.bytes < best.bytes else best
    return best


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> Room | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Room(int(line.split()[1]) * 1024, "available memory")
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_room() -> Room:
    """What a model load on the CPU may use: the tighter of the cgroup's room and available memory (psutil's figure
    where /proc has none). A --max-memory budget is the user's and is used as given (forward.fit)."""
    found = [r for r in (cgroup_room(), available_memory()) if r is not None]
    if not found:
        import psutil

        found = [Room(psutil.virtual_memory().available, "available memory")]
    return min(found, key=lambda r: r.bytes)


def gpu_room(index: int) -> Room:
    import torch

    free, _ = torch.cuda.mem_get_info(index)
    return Room(int(free), f"free memory of GPU {index}")
