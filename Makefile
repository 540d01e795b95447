# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The hot path mypyc compiles (setup.py's HOT_MODULES), built in place beside its sources.
HOT_SOURCES := $(shell $(PYTHON) setup.py hot-modules)
COMPILED := $(VENV)/.compiled
# The JavaScript SDKs the collector's tests drive (tests/e2e/test_collect_js.py), from tests/js's lock file.
JS_STAMP := tests/js/node_modules/.installed

.PHONY: run test bench chaos identity-eval measure-eval soak install build schemas clean

# Installs the dependencies and the package in editable mode; `build` compiles the hot path.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	OMNI_COMPILE=0 $(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

$(COMPILED): $(STAMP) $(HOT_SOURCES)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(COMPILED)

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: the collector's JavaScript SDK tests need Node.js 20 and npm (.ci/run installs them)" >&2; exit 1; }
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

install: $(STAMP)

## Compile the hot path with mypyc (again, after its sources change); OMNI_INTERPRETED=1 runs the sources instead.
build: $(COMPILED)

## Embedded broker + topics + worker + simulator + live view of next-best-actions. Ctrl-C stops it all.
run: $(COMPILED)
	$(BIN)/omni run

## The whole test suite: unit, integration (real broker) and end-to-end.
test: $(COMPILED) $(JS_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests

## Throughput, latency, memory and recovery, against raw aiokafka and Quix Streams; writes bench/results.json.
bench: $(COMPILED)
	OMNI_COMPILE=0 $(BIN)/python -m pip install --quiet -e '.[embedded,bench]'
	$(BIN)/omni bench

## The identity graph scored against the simulator's truth: 5,000 people, 2 workers, 8 partitions.
identity-eval: $(COMPILED)
	$(BIN)/omni identity evaluate --people 5000 --workers 2 --partitions 8 --out bench/identity.json

## The per-rule report checked against a simulated world where each play's true effect is known.
measure-eval: $(COMPILED)
	$(BIN)/omni measure evaluate --customers-per-play 2000 --out bench/measure.json --html bench/measure.html

## Ten minutes of steady load on one worker; memory and lag sampled every 10 s into bench/soak.json.
soak: $(COMPILED)
	$(BIN)/omni soak --rate 5000 --minutes 10 --customers 2000 --out bench/soak.json

## The fault campaign's long run: 30 minutes of load, a fault every 6 s on average, every invariant checked.
chaos: $(COMPILED)
	$(BIN)/omni chaos --minutes 30 --fault-every 6 --out bench/chaos.json

## Regenerate schemas/ from the pydantic models.
schemas: $(COMPILED)
	$(BIN)/omni schemas

clean:
	rm -rf $(VENV) .run .state *.egg-info build tests/js/node_modules
	find pipeline -name '*.so' -delete
