"""How the front reads its runner replicas: `YOLO_TOYS_REPLICAS` and `dns+` names (yolo_toys/replicas.py).

Failover itself is tested against real servers in tests/test_roles.py.
"""

from __future__ import annotations

import asyncio

import pytest

from yolo_toys.replicas import expand
from yolo_toys.settings import Settings, parse_replicas


def test_replicas_setting_lists_urls_per_family() -> None:
    value = "ultralytics=http://10.0.0.5:3000,http://10.0.0.6:3000;transformers=dns+http://runners:3000"
    assert parse_replicas(value) == {
        "ultralytics": ["http://10.0.0.5:3000", "http://10.0.0.6:3000"],
        "transformers": ["dns+http://runners:3000"],
    }
    assert Settings.from_env({"YOLO_TOYS_REPLICAS": value}).replicas["ultralytics"][1] == "http://10.0.0.6:3000"
    assert Settings.from_env({}).replicas == {}


@pytest.mark.parametrize("value", ["ultralytics", "ultralytics=", "ultralytics=,"])
def test_a_malformed_replicas_setting_stops_the_start(value: str) -> None:
    with pytest.raises(ValueError, match="family=URL"):
        parse_replicas(value)


def test_dns_names_stand_for_every_address() -> None:
    urls = asyncio.run(expand("dns+http://localhost:3211"))
    assert "http://127.0.0.1:3211" in urls
    assert all(u in ("http://127.0.0.1:3211", "http://[::1]:3211") for u in urls), urls
    assert asyncio.run(expand("http://localhost:3211")) == ["http://localhost:3211"]
    assert asyncio.run(expand("dns+http://no-such-host.invalid:3000")) == []
