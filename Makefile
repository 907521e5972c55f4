# InterPay's verbs. `make demo` and `make test` work on a fresh machine: each installs
# what is missing (scripts/bootstrap.sh) and starts what it needs (scripts/mesh.py).
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR):$(CURDIR)/gen/python

.PHONY: bootstrap proto publish-contracts lint certs up down status logs demo test bench

bootstrap:
	@bash scripts/bootstrap.sh

proto: bootstrap  ## regenerate gen/ from proto/
	bash scripts/gen_proto.sh

publish-contracts: bootstrap  ## snapshot the contracts `buf breaking` guards from now on
	.venv/bin/buf build --exclude-source-info -o proto/published.binpb

lint: bootstrap
	.venv/bin/buf lint
	.venv/bin/ruff check services scripts tests bench
	.venv/bin/ruff format --check services scripts tests bench
	.venv/bin/mypy

certs: bootstrap  ## the dev mesh's CA and mTLS certificates (`up` makes them too)
	$(PY) scripts/certs.py --profile dev

# mTLS between services is on; `INTERPAY_PLAINTEXT=1 make up` turns it off, for development only.
up: bootstrap  ## start the local mesh (dev profile) and leave it running
	$(PY) scripts/mesh.py up --profile dev

down:
	@[ -x $(PY) ] && $(PY) scripts/mesh.py down --profile dev || true

status:
	@$(PY) scripts/mesh.py status --profile dev

logs:
	@tail -n 20 .data/dev/logs/*.log

demo: up  ## run the end-to-end story through Envoy (curl) and grpcurl
	bash scripts/demo.sh

test: bootstrap  ## install, start the test mesh, run the whole suite, stop the mesh
	bash scripts/test.sh

bench: bootstrap
	bash scripts/bench.sh
