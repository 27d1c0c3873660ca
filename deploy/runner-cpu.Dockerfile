# syntax=docker/dockerfile:1
# A CPU runner (`cpu` deployments), with every model format: ONNX, and the text models
# (sentence embeddings: torch's CPU build, transformers). What the autoscaler's Kubernetes
# executor starts for a `cpu` deployment (EDGEINFER_K8S_IMAGE). Never built here: linted by
# tests/test_deploy_images.py.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY migrations ./migrations
# torch from its CPU index: PyPI's default build carries CUDA (several GB) a CPU node never uses.
RUN /opt/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0+cpu" \
    && /opt/venv/bin/pip install -e ".[text]"

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BENTOML_DO_NOT_TRACK=True \
    OMP_NUM_THREADS=1 \
    EDGEINFER_SPOOL_DIR=/var/lib/edgeinfer/spool \
    EDGEINFER_ARTIFACT_CACHE=/var/cache/edgeinfer/artifacts \
    BENTOML_HOME=/var/lib/edgeinfer/bentoml
RUN useradd --system --uid 10001 --home-dir /var/lib/edgeinfer edgeinfer \
    && mkdir -p /var/lib/edgeinfer/spool /var/lib/edgeinfer/bentoml /var/cache/edgeinfer/artifacts \
    && chown -R edgeinfer /var/lib/edgeinfer /var/cache/edgeinfer
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /var/lib/edgeinfer
USER 10001
EXPOSE 3000
# Ready: the model is loaded and warm, and the runner is not draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"]
ENTRYPOINT ["edgeinfer"]
CMD ["run", "runner"]
