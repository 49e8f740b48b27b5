# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# onnxruntime-gpu runs on CPU-only machines too (it falls back quietly); EXTRA=cpu picks onnxruntime.
EXTRA ?= gpu
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files re-run the install whenever pyproject.toml changes.
$(VENV)/.zoo-$(EXTRA): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[$(EXTRA),zoo]'
	touch $@

$(VENV)/.test-$(EXTRA): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[$(EXTRA),test]'
	touch $@

demo: $(VENV)/.zoo-$(EXTRA)
	$(PY) -m model_zoo build digits_cnn sentiment_bert
	$(VENV)/bin/onnxplain explain "$$($(PY) -m model_zoo path digits_cnn)" \
		--input "$$(dirname "$$($(PY) -m model_zoo path digits_cnn)")/sample.npz" \
		--method saliency --out $(DEMO_OUT)/digits
	$(VENV)/bin/onnxplain explain "$$($(PY) -m model_zoo path sentiment_bert)" \
		--input "$$(dirname "$$($(PY) -m model_zoo path sentiment_bert)")/sample.npz" \
		--vocab "$$(dirname "$$($(PY) -m model_zoo path sentiment_bert)")/vocab.txt" \
		--method layer_integrated_gradients --target 1 --out $(DEMO_OUT)/sentiment
	@echo "Explained 16 test digits (saliency) and 6 sentences (evidence for 'positive');"
	@echo "outputs are in $(abspath $(DEMO_OUT))/:"
	@echo "  digits/: attribution.npy, heatmap_image_*.png, summary.json"
	@echo "  sentiment/: tokens_input_ids_*.html (red: for, blue: against), tokens.json"

lint: $(VENV)/.test-$(EXTRA)
	$(VENV)/bin/ruff check .

test: $(VENV)/.test-$(EXTRA)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(VENV)/.test-$(EXTRA)
	$(PY) benchmarks/saliency_resnet.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info .pytest_cache .ruff_cache
