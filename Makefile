# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench identity-eval measure-eval soak install schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

install: $(STAMP)

## Embedded broker + topics + worker + simulator + live view of next-best-actions. Ctrl-C stops it all.
run: $(STAMP)
	$(BIN)/omni run

## The whole test suite: unit, integration (real broker) and end-to-end.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests

## Throughput, latency, memory and recovery, against raw aiokafka and Quix Streams; writes bench/results.json.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[embedded,bench]'
	$(BIN)/omni bench

## The identity graph scored against the simulator's truth: 5,000 people, 2 workers, 8 partitions.
identity-eval: $(STAMP)
	$(BIN)/omni identity evaluate --people 5000 --workers 2 --partitions 8 --out bench/identity.json

## The per-rule report checked against a simulated world where each play's true effect is known.
measure-eval: $(STAMP)
	$(BIN)/omni measure evaluate --customers-per-play 2000 --out bench/measure.json --html bench/measure.html

## Ten minutes of steady load on one worker; memory and lag sampled every 10 s into bench/soak.json.
soak: $(STAMP)
	$(BIN)/omni soak --rate 5000 --minutes 10 --customers 2000 --out bench/soak.json

## Regenerate schemas/ from the pydantic models.
schemas: $(STAMP)
	$(BIN)/omni schemas

clean:
	rm -rf $(VENV) .run .state *.egg-info
