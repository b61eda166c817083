# The two commands: `make run` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench conformance clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# the engine, with the stub FHIR server its example routes deliver to (stopped with the engine),
# the in-process stub payer, and a sample schedule: eligibility checks every two minutes
run: $(STAMP)
	@$(VENV)/bin/engine stub-fhir --port 8090 & stub=$$!; \
	trap 'kill $$stub 2>/dev/null' EXIT INT TERM; \
	ENGINE_ELIGIBILITY_ON_START=true ENGINE_ELIGIBILITY_CRON='*/2 * * * *' ENGINE_LOG_FORMAT=text \
	$(VENV)/bin/engine serve

lint: $(STAMP)
	$(VENV)/bin/ruff check engine tests bench scripts
	$(VENV)/bin/ruff format --check engine tests bench scripts
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

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
