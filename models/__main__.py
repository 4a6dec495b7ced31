"""`python -m models import [NAME...]` and `python -m models list`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

from models.catalog import load_catalog, weights_dir
from models.store import import_model, stored


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="put catalog models into the BentoML model store")
    imp.add_argument("names", nargs="*", help="catalog names (default: all)")
    imp.add_argument("--force", action="store_true", help="re-import even when up to date")
    sub.add_parser("list", help="show the catalog and what the model store holds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _import(args.names, args.force) if args.command == "import" else _list()


if __name__ == "__main__":
    sys.exit(main())
