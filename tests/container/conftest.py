"""The built image checked from outside: opt-in (`make container-test`), never part of `make test`.

Plain `pytest` collects nothing from this folder; YOLO_TOYS_CONTAINER_TEST=1 turns it on. The folder
is a package (`__init__.py`) so that this conftest and tests/conftest.py are two modules, not two
files fighting over the name `conftest`.
"""

import os

if os.environ.get("YOLO_TOYS_CONTAINER_TEST") != "1":
    collect_ignore_glob = ["*"]
