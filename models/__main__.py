"""Manage the models of YOLO-Toys from the command line.

`import` and `list` work on the local BentoML model store (before the server starts); `register`, `load`,
`unload` and `versions` ask a running server's management API (models/remote.py), which changes what it
serves without a restart.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from models import remote
from models.catalog import load_catalog, weights_dir
from models.store import import_model, stored
from yolo_toys.schemas import Task

DEFAULT_TIMEOUT_S = 100.0  # the server takes 1-110 s (below the front's 120 s request timeout)


def _import(names: list[str], force: bool) -> int:
    catalog = load_catalog()
    unknown = [n for n in names if catalog.get(n) is None]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; the catalog has: "
              f"{', '.join(m.name for m in catalog.models)}", file=sys.stderr)
        return 2
    entries = [catalog.get(n) for n in names] if names else catalog.models
    print(f"weights directory: {weights_dir() or '(none)'}")
    outcomes = []
    # A bar on a terminal; one line per step in a log file, where a bar's redraws would run together.
    with tqdm(entries, unit="model", desc="importing", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for i, entry in enumerate(bar, 1):
            progress = bar.set_postfix_str if sys.stderr.isatty() else _line(f"importing {i}/{len(entries)}")
            progress(entry.name)
            outcomes.append(import_model(entry, catalog.family_module(entry.family), force=force, progress=progress))
    width = max((len(o.name) for o in outcomes), default=0)
    for o in outcomes:
        print(f"{o.name:<{width}}  {o.status:<10}  {o.tag or ''}  {o.detail}")
    return 0


def _line(prefix: str) -> Callable[[str], None]:
    return lambda message: print(f"{prefix} {message}", file=sys.stderr, flush=True)


def _list() -> int:
    catalog = load_catalog()
    for entry in catalog.models:
        model = stored(entry.name)
        where = f"{model.tag} ({model.info.metadata.get('source')})" if model else "not imported"
        print(f"{entry.name:<20} {entry.family:<13} {entry.task.value:<9} {where}")
    return 0


def _register(args: argparse.Namespace) -> int:
    return remote.register(
        args.path, name=args.name, family=args.family, task=args.task, hf_task=args.hf_task,
        description=args.description, load=args.load, default=args.default, timeout_s=args.timeout,
        server=_server(args),
    )


def _load(args: argparse.Namespace) -> int:
    return remote.load(args.name, version=args.version, default=args.default, timeout_s=args.timeout,
                       server=_server(args))


def _unload(args: argparse.Namespace) -> int:
    return remote.unload(args.name, version=args.version, timeout_s=args.timeout, server=_server(args))


def _versions(args: argparse.Namespace) -> int:
    return remote.versions(args.name, server=_server(args))


def _server(args: argparse.Namespace) -> remote.Server:
    return remote.Server(url=args.url, key=args.key)


def _server_options() -> argparse.ArgumentParser:
    """The options every command that talks to a running server takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the server (default: $YOLO_TOYS_URL, else {remote.DEFAULT_URL})")
    common.add_argument("--key", help="admin key, sent as a bearer token (default: $YOLO_TOYS_ADMIN_KEY)")
    return common


def _add_local(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="put catalog models into the BentoML model store")
    imp.add_argument("names", nargs="*", help="catalog names (default: all)")
    imp.add_argument("--force", action="store_true", help="re-import even when up to date")
    imp.set_defaults(run=lambda args: _import(args.names, args.force))
    sub.add_parser("list", help="show the catalog and what the model store holds").set_defaults(run=lambda _: _list())


def _add_register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    reg = sub.add_parser(
        "register", parents=[common], help="upload weights to a running server as a new model version",
        description="Upload a weights file (.onnx, .engine, .pt, .zip) or folder (an OpenVINO export, a "
                    "transformers save_pretrained folder; zipped first) as a new version of a model.")
    reg.add_argument("path", type=Path, help="the weights file or folder")
    reg.add_argument("--name", required=True, help="model name (a new model, or a new version of this one)")
    reg.add_argument("--family", required=True, help="model family, e.g. ultralytics or transformers")
    reg.add_argument("--task", required=True, choices=[t.value for t in Task], help="what the model does")
    reg.add_argument("--hf-task", help="transformers pipeline task, e.g. image-classification")
    reg.add_argument("--description", help="one line shown in the model list")
    reg.add_argument("--no-load", dest="load", action="store_false", help="store the version without loading it")
    reg.add_argument("--default", action="store_true", help="make this version the one requests get by default")
    _add_timeout(reg, "how long the server may take to store and load it")
    reg.set_defaults(run=_register)


def _add_runtime(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    load = sub.add_parser("load", parents=[common], help="load a model version on a running server")
    load.add_argument("name", help="model name")
    load.add_argument("--version", type=int, metavar="N", help="version number (omitted: the server decides which)")
    load.add_argument("--default", action="store_true", help="also make this version the default")
    _add_timeout(load, "how long the server may take to load it")
    load.set_defaults(run=_load)
    unload = sub.add_parser("unload", parents=[common], help="unload a model version on a running server")
    unload.add_argument("name", help="model name")
    unload.add_argument("--version", type=int, metavar="N", help="version number (omitted: the server decides which)")
    _add_timeout(unload, "how long the server may take to unload it")
    unload.set_defaults(run=_unload)
    ver = sub.add_parser("versions", parents=[common], help="show a model's versions on a running server")
    ver.add_argument("name", help="model name")
    ver.set_defaults(run=_versions)


def _add_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"{what}, in seconds (default: {DEFAULT_TIMEOUT_S:g})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _server_options()
    _add_local(sub)
    _add_register(sub, common)
    _add_runtime(sub, common)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
