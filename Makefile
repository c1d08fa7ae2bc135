# The two commands of the README, plus lint. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode puts the project root on sys.path, so twistd finds
	# twisted/plugins/ (the default editable mode hides it).
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m dcvix.demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the tests marked long (fault tests, fuzzing): for quick turns.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not long" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dcvix tests bench twisted
	$(BIN)/ruff format --check dcvix tests bench twisted
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo
