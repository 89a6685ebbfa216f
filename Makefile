# Developer shortcuts. PY: the project's virtual environment.
PY ?= .venv/bin/python

.PHONY: docs docs-serve tutorials tutorials-quick gallery test lint

# The documentation site, built offline into site/ (needs `pip install -e '.[docs]'`).
docs:
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build -f mkdocs.yml -d site

docs-serve:
	$(PY) -m mkdocs serve -f mkdocs.yml

# Run every tutorial at full budget; figures and pages into docs/tutorials/.
tutorials:
	OMP_NUM_THREADS=1 $(PY) docs/gen_tutorials.py

tutorials-quick:
	OMP_NUM_THREADS=1 $(PY) docs/gen_tutorials.py --quick

# Every 2-D family on 8 Gaussians; the docs' gallery page embeds the result.
gallery:
	OMP_NUM_THREADS=1 $(PY) -m pushforward gallery --out docs/gallery --max-time 25

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check src tests benchmarks examples
