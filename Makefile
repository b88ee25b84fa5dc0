# `make app` and `make test` create .venv when missing, install what is missing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APP_PORT ?= 8501
SERVE_PORT ?= 8501
# Streamlit settings for a public port (make app keeps the local defaults): XSRF protection, a 10 MB upload cap,
# no exception details or tracebacks in the browser, no file watcher, nothing sent to Streamlit's usage stats.
SERVE_FLAGS := --server.headless true --server.port $(SERVE_PORT) --server.enableXsrfProtection true \
	--server.enableCORS true --server.maxUploadSize 10 --server.fileWatcherType none \
	--client.showErrorDetails none --client.toolbarMode minimal --browser.gatherUsageStats false

.PHONY: app serve test install browser demo clean-demo

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

# frpt.ui.launch queues the galleries the app offers (FRPT_CUB_ROOT set: the shipped CUB checkpoints') in the
# server's own process, then runs `streamlit run app.py` with these options.
app: $(STAMP)
	$(PY) -m frpt.ui.launch --server.port $(APP_PORT) --server.headless true

# Serving mode: locked to serve.toml (or $$FRPT_SERVE_CONFIG); see docs/serving.md. The config is checked first;
# the launcher starts the configured checkpoints' galleries (the first one first) before anyone opens a page.
serve: $(STAMP)
	$(PY) -m frpt serve --check
	FRPT_SERVE=1 $(PY) -m frpt.ui.launch $(SERVE_FLAGS)

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
