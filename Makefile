# The two commands: `make run` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench conformance chaos fuzz soak clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# the engine, with the stub FHIR server, the stub Epic and the stub athenahealth its example routes
# deliver to (all stopped with the engine: Ctrl-C), the in-process stub payer, and a sample
# schedule: eligibility checks every two minutes. The engine's signing key is made once (Epic's
# stub fetches its public key from the engine's /.well-known/jwks.json); athena's client secret
# is made for this run (or taken from ENGINE_STUB_ATHENA_SECRET) and given to both, never stored;
# the athena destination is layered over the example routes from engine/sim/routes (unless
# ENGINE_ROUTES_DIR names a site directory).
run: $(STAMP)
	@$(VENV)/bin/engine keys list 2>/dev/null | grep -q ' active ' || $(VENV)/bin/engine keys create
	@ENGINE_STUB_ATHENA_SECRET=$${ENGINE_STUB_ATHENA_SECRET:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(24))')}; \
	export ENGINE_STUB_ATHENA_SECRET; \
	$(VENV)/bin/engine stub-fhir --port 8090 & fhir=$$!; \
	$(VENV)/bin/engine stub-epic --port 8092 --client-id engine-demo \
		--jwks-url http://127.0.0.1:8080/.well-known/jwks.json & epic=$$!; \
	$(VENV)/bin/engine stub-athena --port 8093 --client-id engine-demo 2>/dev/null & athena=$$!; \
	trap 'kill $$fhir $$epic $$athena 2>/dev/null' EXIT INT TERM; \
	ENGINE_ELIGIBILITY_ON_START=true ENGINE_ELIGIBILITY_CRON='*/2 * * * *' ENGINE_LOG_FORMAT=text \
	ENGINE_PUBLIC_BASE_URL=http://127.0.0.1:8080 ENGINE_ROUTES_DIR=$${ENGINE_ROUTES_DIR:-engine/sim/routes} \
	$(VENV)/bin/engine serve

lint: $(STAMP)
	$(VENV)/bin/ruff check engine tests bench scripts fuzz chaos soak
	$(VENV)/bin/ruff format --check engine tests bench scripts fuzz chaos soak
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m bench

conformance: $(STAMP)
	$(PY) -m scripts.conformance; hl7=$$?; $(PY) -m scripts.x12_conformance; x12=$$?; \
	test $$hl7 -eq 0 -a $$x12 -eq 0

# the fault campaign (issue 14): every scenario, 10,000 messages each; the table in var/chaos/summary.md.
# CHAOS_ARGS for one scenario or a quick run: make chaos CHAOS_ARGS='--scenario kill-engine --messages 500'
chaos: $(STAMP)
	nice -n 10 $(PY) -m chaos $(CHAOS_ARGS)

# fuzzing (issue 14): 100,000 inputs for each target (er7, mllp, x12, fhir, mappings, routes);
# exits non-zero on a crash or an input over 1 s, crashing inputs in var/fuzz/crashes/.
# FUZZ_ARGS for one target or a quick run: make fuzz FUZZ_ARGS='--target er7 --inputs 2000'
fuzz: $(STAMP)
	nice -n 10 $(PY) -m fuzz $(FUZZ_ARGS)

# the soak (issue 14): an hour at 200 msg/s (8 MLLP senders) with a 1 MiB document every 2 s and
# eligibility every 2 minutes; RSS, fds, database connections, backlog and ACK p50/p99 sampled
# every 10 s; samples.csv, summary.json and plot.png in var/soak/<time>/, non-zero exit when a
# criterion fails. SOAK_ARGS for a short run: make soak SOAK_ARGS='--minutes 3'
soak: $(STAMP)
	$(PY) -m soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
