# imdb_sentiment on TorchServe (default) or on KServe's Python model server (--build-arg SERVER=kserve);
# CPU image by default, GPU image with --build-arg DEVICE=gpu.
#
#   make image                                   # TorchServe, CPU, FROM debian:bookworm-slim
#   make image SERVER=kserve                     # KServe's Python model server (no Java)
#   docker build --build-arg DEVICE=gpu -t imdb-sentiment:gpu .
#
# Both follow KServe's storage layout: /mnt/models/model-store/imdb_sentiment.mar (and, for TorchServe,
# /mnt/models/config/config.properties; a KServe storage mount replaces both), user 1000.
# SERVER=torchserve runs `torchserve --foreground --model-store=... --ts-config=...`; SERVER=kserve runs
# `python -m kserve_server --model /mnt/models/model-store/imdb_sentiment.mar --host 0.0.0.0 --port 8080 --grace 10`
# (kserve_server/ and handler/ installed into the venv, requirements/kserve.txt). Everything either
# writes goes to /home/model-server and /tmp: the root filesystem can be read-only (docker run
# --read-only --tmpfs ..., readOnlyRootFilesystem).
#
# Behind a TLS-intercepting proxy or a private index, put ca.crt / pip.conf / wheels/ into a folder
# of the build context and pass it as BUILD_ENV: only the builder stage sees it, the final image
# copies the virtual environment and nothing else from that stage (docs/deploy.md).

# The base of all stages: Debian 12 with Python 3.11 and OpenJDK 17 in its archive.
ARG BASE_IMAGE=debian:bookworm-slim
# torchserve | kserve: the runtime stage the image is built on (runtime-torchserve, runtime-kserve).
ARG SERVER=torchserve

FROM ${BASE_IMAGE} AS builder
ARG DEVICE=cpu
ARG SERVER
# Where torch comes from: PyTorch's CPU index for CPU images; PyPI (CUDA wheels) for DEVICE=gpu.
ARG TORCH_INDEX_URL=""
ARG BUILD_ENV=deploy/build-env
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY ${BUILD_ENV}/ /build-env/
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# kserve.txt is runtime.txt (-r) plus KServe's server and its closure, pinned.
COPY requirements/runtime.txt requirements/kserve.txt /tmp/requirements/
RUN case "${SERVER}" in torchserve) reqs=runtime.txt ;; kserve) reqs=kserve.txt ;; \
        *) echo "SERVER must be torchserve or kserve, not '${SERVER}'" >&2; exit 1 ;; esac \
    && if [ -f /build-env/ca.crt ]; then export PIP_CERT=/build-env/ca.crt; fi \
    && if [ -f /build-env/pip.conf ]; then export PIP_CONFIG_FILE=/build-env/pip.conf; fi \
    && if [ -d /build-env/wheels ]; then export PIP_FIND_LINKS=/build-env/wheels; fi \
    && index="${TORCH_INDEX_URL:-$([ "${DEVICE}" = gpu ] && echo https://pypi.org/simple || echo https://download.pytorch.org/whl/cpu)}" \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --extra-index-url "${index}" -r "/tmp/requirements/${reqs}" \
    && /opt/venv/bin/python -c "import torch, captum, spacy, safetensors, ts; print('torch', torch.__version__)"
# The KServe server's code (TorchServe's image needs none: its handler travels in the .mar).
COPY handler/ /src/handler/
COPY kserve_server/ /src/kserve_server/
RUN if [ "${SERVER}" = kserve ]; then \
        cp -r /src/handler /src/kserve_server "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
        && /opt/venv/bin/python -c "import kserve, kserve_server.server; from importlib.metadata import version; print('kserve', version('kserve'))"; \
    fi

# TorchServe: a JRE for its frontend, Python for its workers.
FROM ${BASE_IMAGE} AS runtime-torchserve
LABEL org.opencontainers.image.title="imdb-sentiment" \
      org.opencontainers.image.description="IMDB sentiment CNN with Layer IG explanations on TorchServe 0.12"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/model-server --shell /usr/sbin/nologin model-server
# Root-owned and not writable by user 1000: the configuration is read-only even without --read-only.
COPY deploy/storage/config/config.properties metrics.yaml log4j2.xml /mnt/models/config/
EXPOSE 8080 8082
CMD ["torchserve", "--foreground", "--model-store=/mnt/models/model-store", "--ts-config=/mnt/models/config/config.properties"]

# KServe's Python model server: Python only, one port (inference, probes and /metrics).
FROM ${BASE_IMAGE} AS runtime-kserve
LABEL org.opencontainers.image.title="imdb-sentiment" \
      org.opencontainers.image.description="IMDB sentiment CNN with Layer IG explanations on KServe's Python model server 0.21"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/model-server --shell /usr/sbin/nologin model-server
EXPOSE 8080
# --grace: seconds uvicorn gives the requests it holds after SIGTERM (docker stop's default wait is 10 s).
CMD ["python", "-m", "kserve_server", "--model", "/mnt/models/model-store/imdb_sentiment.mar", "--host", "0.0.0.0", "--port", "8080", "--grace", "10"]

# The image: the chosen runtime (its packages, LABEL, EXPOSE and CMD) with the venv and the model.
# runtime-${SERVER} is a stage of this file, not an image that a tag could pin:
# hadolint ignore=DL3006
FROM runtime-${SERVER}
COPY --from=builder /opt/venv /opt/venv
# Root-owned and not writable by user 1000: the model store is read-only even without --read-only.
COPY model_store/imdb_sentiment.mar /mnt/models/model-store/
# NVIDIA's container runtime mounts the driver when these are set; CPU images ignore them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    TEMP=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
WORKDIR /home/model-server
