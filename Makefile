# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create .venv and install everything from the package registries first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch resolves from the local wheel on the project's machines; elsewhere from PyPI.
TORCH ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ganfit reconstruct "$$($(BIN)/python -c 'from ganfit.io.samples import sample_photo; print(sample_photo("grace_hopper"))')" \
		-o $(DEMO_OUT)/grace_hopper --force
	@echo "Open $(DEMO_OUT)/grace_hopper/preview.png (render over the photo) or import head.glb / head.obj."

# Two runs: the Blender tests (tests/blender) load bpy, and torch must never load beside it
# (as in real use, where the engine is a separate process).
test: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/blender
	$(BIN)/python -m mypy --config-file mypy-blender.ini
	$(BIN)/python -m pytest tests/blender

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_renderer.py
	$(BIN)/python benchmarks/bench_landmark_fit.py
	$(BIN)/python benchmarks/landmark_accuracy.py
	$(BIN)/python benchmarks/bench_identity_network.py
	$(BIN)/python benchmarks/bench_joint_step.py
	$(BIN)/python benchmarks/fast_speed.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
