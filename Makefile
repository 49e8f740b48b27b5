# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# onnxruntime-gpu runs on CPU-only machines too (it falls back quietly); EXTRA=cpu picks onnxruntime.
EXTRA ?= gpu
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench clean

# The first run creates the virtual environment (about 2.5 GB with torch, transformers and
# ONNX Runtime: some 3.5 minutes on two cores); later runs reuse it.
$(VENV)/bin/python:
	@echo "== first run: creating $(VENV) and installing onnxplain with the model-zoo tools"
	@echo "   (about 2.5 GB, 3-4 minutes on two cores; later runs reuse it)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files re-run the install whenever pyproject.toml changes.
$(VENV)/.zoo-$(EXTRA): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[$(EXTRA),zoo]'
	touch $@

# LXT (the AttnLRP authors' code), the oracle of tests/transformers/test_attn_lrp_lxt.py, is
# installed without its dependencies: they include open_clip_torch and torchvision, which
# would replace torch.
$(VENV)/.test-$(EXTRA): pyproject.toml Makefile | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[$(EXTRA),test]'
	$(PY) -m pip install --quiet --no-deps lxt==2.1
	touch $@

demo: $(VENV)/.zoo-$(EXTRA)
	@echo "== building the demo models (trains a digits CNN, a tiny BERT and a tiny GPT-2: about 40 s)"
	$(PY) -m model_zoo build digits_cnn sentiment_bert causal_lm
	@echo "== explaining 16 test digits with saliency"
	$(VENV)/bin/onnxplain explain "$$($(PY) -m model_zoo path digits_cnn)" \
		--input "$$(dirname "$$($(PY) -m model_zoo path digits_cnn)")/sample.npz" \
		--method saliency --out $(DEMO_OUT)/digits
	@echo "== explaining 6 sentences with Layer Integrated Gradients (evidence for 'positive')"
	$(VENV)/bin/onnxplain explain "$$($(PY) -m model_zoo path sentiment_bert)" \
		--input "$$(dirname "$$($(PY) -m model_zoo path sentiment_bert)")/sample.npz" \
		--vocab "$$(dirname "$$($(PY) -m model_zoo path sentiment_bert)")/vocab.txt" \
		--method layer_integrated_gradients --target 1 --out $(DEMO_OUT)/sentiment
	@$(PY) -c "import json; rows = json.load(open('$(DEMO_OUT)/sentiment/tokens.json'))['input_ids']; \
		[print('  ' + '  '.join(f\"{t['token']} {t['score']:+.2f}\" for t in row)) for row in rows[:2]]"
	@echo "== a causal language model: generating 2 tokens, each explained with saliency"
	$(VENV)/bin/onnxplain generate "$$($(PY) -m model_zoo path causal_lm)" \
		--vocab "$$(dirname "$$($(PY) -m model_zoo path causal_lm)")/vocab.txt" \
		--text "alice saw a brown cow near the river and it said" \
		--steps 2 --method saliency --out $(DEMO_OUT)/causal_lm
	@echo "Outputs are in $(abspath $(DEMO_OUT))/:"
	@echo "  digits/: attribution.npy, heatmap and overlay PNGs, summary.json"
	@echo "  sentiment/: tokens_input_ids_*.html (red: for 'positive', blue: against), tokens.json"
	@echo "  causal_lm/: generation.html (the prompt coloured by its saliency for each generated token), generation.json"

lint: $(VENV)/.test-$(EXTRA)
	$(VENV)/bin/ruff check .

test: $(VENV)/.test-$(EXTRA)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(VENV)/.test-$(EXTRA)
	$(PY) benchmarks/saliency_resnet.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info .pytest_cache .ruff_cache
