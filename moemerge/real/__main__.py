"""`python -m moemerge.real [--cache DIR] [--config FILE]`: build (or reuse) the real base, experts and texts."""

from __future__ import annotations

import argparse
from pathlib import Path

from moemerge.real import assets, write_config


def link(folder: Path, found) -> Path:
    """Short, stable names for the cached folders (what examples/configs/demo.yaml names)."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = {"base": found.base, **found.experts, "data": next(iter(found.eval_files.values())).parent}
    for name, target in targets.items():
        entry = folder / name
        if entry.is_symlink():
            entry.unlink()
        elif entry.exists():
            raise SystemExit(f"error: {entry} exists and is not a link; remove it or choose another --link folder")
        entry.symlink_to(target.resolve(), target_is_directory=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moemerge.real", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="cache folder (default: $MOEMERGE_CACHE, else $XDG_CACHE_HOME/moemerge)")
    parser.add_argument("--config", help="also write a merge config of the real experts to this YAML file")
    parser.add_argument("--link", help="also make DIR/{base,code,math,prose,data} symbolic links into the cache")
    args = parser.parse_args(argv)
    found = assets(args.cache)
    print(f"base    {found.base}")
    for name, path in found.experts.items():
        print(f"{name:7s} {path}  (held-out text: {found.eval_files[name]})")
    if args.link:
        print(f"links   {link(Path(args.link), found)}")
    if args.config:
        print(f"config  {write_config(Path(args.config), found)}")


if __name__ == "__main__":
    main()
