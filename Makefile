# `make app` and `make test` create .venv when missing, install what is missing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APP_PORT ?= 8501

.PHONY: app test install browser demo clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium + ChromeDriver for the real-browser test; skipped quietly where apt is unavailable.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	    echo "note: could not install chromium/chromium-driver; the browser test will be skipped"; }

app: $(STAMP)
	$(PY) -m streamlit run app.py --server.port $(APP_PORT) --server.headless true

test: $(STAMP) browser
	$(PY) -m pytest -q

# Rebuild the shipped demo checkpoint in assets/ from the built-in synthetic set.
demo: $(STAMP)
	$(PY) -m frpt.demo --rebuild

# The README's screenshots (assets/screenshots/) from the running app in headless Chromium, on real CUB images:
# needs CUB (CUB_ROOT) and, to be quick, the checkpoint's test gallery embedded once (bench/screenshots.py says how).
.PHONY: screenshots
CUB_ROOT ?= ../shared/data/CUB_200_2011
screenshots: $(STAMP) browser
	$(PY) bench/screenshots.py --root $(CUB_ROOT)
