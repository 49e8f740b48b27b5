"""python -m model_zoo list | build NAME [--force] | path NAME"""

from __future__ import annotations

import argparse
import sys

from .registry import ZOO, build, cache_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the models")
    builder = sub.add_parser("build", help="build a model (cached)")
    builder.add_argument("names", nargs="+", choices=sorted(ZOO) + ["all"])
    builder.add_argument("--force", action="store_true", help="rebuild even if cached")
    path = sub.add_parser("path", help="print a model's ONNX path, building it if needed")
    path.add_argument("name", choices=sorted(ZOO))
    args = parser.parse_args(argv)
    if args.command == "list":
        for entry in ZOO.values():
            print(f"{entry.name:12s} {entry.description}")
        print(f"cache: {cache_dir()}")
    elif args.command == "build":
        names = sorted(ZOO) if "all" in args.names else args.names
        for name in names:
            folder = build(name, force=args.force)
            print(f"{name}: {folder / 'model.onnx'}")
    else:
        print(build(args.name) / "model.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
