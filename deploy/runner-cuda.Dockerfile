# syntax=docker/dockerfile:1
# A GPU runner: torch's CUDA build and onnxruntime-gpu on NVIDIA's CUDA runtime with cuDNN.
# What the autoscaler's Kubernetes executor starts for a GPU class (EDGEINFER_K8S_IMAGE;
# the NVIDIA device plugin gives the container its one GPU). Never built here (no Docker
# daemon, no GPU on this machine): linted by tests/test_deploy_images.py.

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN python3.11 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY migrations ./migrations
# The project pulls onnxruntime (CPU); onnxruntime-gpu replaces it: the two share a module.
RUN /opt/venv/bin/pip install -e ".[text]" "torch==2.13.0" \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install "onnxruntime-gpu==1.32.0"

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BENTOML_DO_NOT_TRACK=True \
    EDGEINFER_SPOOL_DIR=/var/lib/edgeinfer/spool \
    EDGEINFER_ARTIFACT_CACHE=/var/cache/edgeinfer/artifacts \
    BENTOML_HOME=/var/lib/edgeinfer/bentoml
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/edgeinfer edgeinfer \
    && mkdir -p /var/lib/edgeinfer/spool /var/lib/edgeinfer/bentoml /var/cache/edgeinfer/artifacts \
    && chown -R edgeinfer /var/lib/edgeinfer /var/cache/edgeinfer
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /var/lib/edgeinfer
USER 10001
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"]
ENTRYPOINT ["edgeinfer"]
CMD ["run", "runner"]
