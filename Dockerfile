# syntax=docker/dockerfile:1
# The one image every Fathom service of compose.yaml runs: `fathom serve`, `fathom ui`,
# `fathom fraud stream`, `fathom nodule listen` (the command picks the service).
#
#   docker build -t fathom:0.1.0 .
#   docker run --rm -p 127.0.0.1:8000:8000 -e FATHOM_API_KEY=... fathom:0.1.0 serve --host 0.0.0.0

# --- stage 1: build the fathom wheel (sources never reach the final image) -----------------------
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY apps ./apps
COPY core ./core
COPY connectors ./connectors
COPY kernels ./kernels
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- stage 2: the runtime --------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FATHOM_MODELS_DIR=/app/models \
    FATHOM_CACHE_DIR=/data/cache \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# A C compiler for the optional fused CPU MoE kernel (kernels/moe_experts_cpu.py compiles it on first
# use, for the host's CPU); without one Fathom runs the torch path. curl-free: healthchecks use python.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of torch first, pinned, from the PyTorch CPU index: resolved from PyPI as a
# dependency of fathom it would be the multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Then fathom and the rest of its dependencies (torch>=2.13,<2.14 is already satisfied).
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/fathom-*.whl && rm -rf /wheels

# Non-root user; /data/* exist and belong to it so named volumes mounted there start writable.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/fathom fathom \
    && mkdir -p /app /data/cache /data/fraud /data/nodule \
    && chown -R fathom:fathom /data
WORKDIR /app
# Shipped weights (safetensors + model card), found through $FATHOM_MODELS_DIR: the installed
# package lives in site-packages, away from the checkout's models/ folder.
COPY --chown=fathom:fathom models ./models

USER fathom
# api, ui, DICOM listener
EXPOSE 8000 8501 11112
ENTRYPOINT ["fathom"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
