# The README's two commands: `make serve` and `make test`. Each sets up everything it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 3000
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv import serve test lint build container container-test bench bench-quick bench-limits bench-replicas clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.txt -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## Put the catalog's models into the BentoML model store (skips what cannot be obtained).
import: venv
	$(BIN)/python -m models import

serve: import
	$(BIN)/bentoml serve service:YoloToys --port $(PORT)

lint: venv
	$(BIN)/ruff check .

## Debian's Chromium for the demo's browser test (Playwright drives it; no browser download).
$(CHROMIUM):
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: venv lint $(CHROMIUM)
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

build: import
	$(BIN)/bentoml build

## The Bento as the OCI image yolo-toys:latest: Docker, else buildah, else podman (docs/container.md; 6.9 GB, ~4 min the
## first time, seconds after a code change). CONTAINER_ARGS="--offline-base": base image from Debian; "--cpu": CPU torch.
container: build
	deploy/container.sh $(CONTAINER_ARGS)

## The image checked from outside with buildah: whole Bento, three roles, a replica killed under load (not in `make test`;
## rebuilds the image first; ~1.5 min once it exists). Writes docs/container.{json,md}.
container-test: container
	YOLO_TOYS_CONTAINER_TEST=1 $(BIN)/python -m pytest tests/container $(PYTEST_ARGS)

## Served vs the in-process limit, benchmark_app / the PyTorch forward pass, and three peers (hand-written FastAPI,
## LitServe, BentoML's YOLO example) on the same cores, 3 rounds alternated point by point (8 s points; peers at c=1 and
## 16, YOLO-Toys also at 4 and 64); then /batch vs single requests, a 60 s soak, RSS over 10,000 requests and YOLO-Toys
## on all cores. Writes docs/benchmarks.{md,json} and plots (~35 min on 2 cores, at most ~40).
## BENCH_ARGS passes options, e.g. BENCH_ARGS="--server-cpus 0-11 --client-cpus 12-15" or "--rounds 5".
bench: venv
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m bench $(BENCH_ARGS)

## The regression guard for the hot path, yolov8n OpenVINO in 2 rounds (10 s points, c=1 and 16): prints, per round and
## as median (min-max), served/limit, served/benchmark_app (OpenVINO's inference-only limit, latency and throughput
## hints) and served/best peer (hand-written FastAPI, LitServe, BentoML's YOLO example) (~7 min on 2 cores, at most ~10).
bench-quick: venv
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m bench --quick $(BENCH_ARGS)

## Worst-case time and memory of every task on the images and options built to blow its preprocessing up;
## writes docs/limits.{md,json} (~15 min; run it alone on the machine). LIMITS_ARGS="--cases depth" runs some tasks.
bench-limits: venv
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m bench.limits $(LIMITS_ARGS)

## How calls spread over two runner replicas, per call (the front) vs per connection (a TCP balancer);
## writes docs/replicas.{md,json} (~4 min; run it alone on the machine).
bench-replicas: venv
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m bench.replicas $(REPLICAS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
