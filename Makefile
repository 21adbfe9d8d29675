# The two commands of the README. Both create the virtual environment on first use.
#   make demo   runs the demo DAG (config.yaml: toy data, tiny models) with 2 cores
#   make test   runs the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
# The default profile allows one GPU job at a time (gpu: 1). Without a GPU every job runs
# on the CPU, so the demo lets as many "GPU" jobs run as it has cores.
GPU_SLOTS ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "$${n:-0}" -gt 0 ] && echo $$n || echo $(CORES))
STAMP := $(VENV)/.ctrlbench-installed

.PHONY: demo test lint venv clean browser toyworld-train

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=$(GPU_SLOTS) --workflow-profile profiles/default

# Debian's chromium for the HTML report's browser test; where it cannot be installed (no
# root, no apt) the test is skipped with the reason printed.
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) ) || \
		echo "chromium not installed: the browser test will be skipped"

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q -rs --durations=15

# Train the toy world's models from scratch as the committed weights were: VAE, SD, CLIP and
# segmenter, then 2,400 more SD steps, then the ControlNet on that SD (about 2 h 40 min on 2
# CPU cores; docs/toyworld.md). The trained weights are committed: the demo and the tests
# never run this.
toyworld-train: $(STAMP)
	$(VENV)/bin/python -m ctrlbench.toyworld.train --out ctrlbench/toyworld/weights --only vae sd clip segmenter
	$(VENV)/bin/python -m ctrlbench.toyworld.train --out ctrlbench/toyworld/weights --only sd --resume-sd --steps 2400
	$(VENV)/bin/python -m ctrlbench.toyworld.train --out ctrlbench/toyworld/weights --only controlnet
	$(VENV)/bin/python -m ctrlbench.toyworld.train --out ctrlbench/toyworld/weights --plot docs/toyworld_losses.png

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
