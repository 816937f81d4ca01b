# imdb_sentiment on TorchServe: CPU image by default, GPU image with --build-arg DEVICE=gpu.
#
#   make image                                   # CPU, FROM debian:bookworm-slim
#   docker build --build-arg DEVICE=gpu -t imdb-sentiment:gpu .
#
# The image follows KServe's TorchServe layout: /mnt/models/config/config.properties and
# /mnt/models/model-store/imdb_sentiment.mar (a KServe storage mount replaces both), user 1000, and
# `torchserve --foreground --model-store=... --ts-config=...` as its command. Everything it writes goes
# to /home/model-server (logs) and /tmp (the extracted .mar, pid file, worker sockets): the root
# filesystem can be read-only (docker run --read-only --tmpfs ..., readOnlyRootFilesystem).
#
# Behind a TLS-intercepting proxy or a private index, put ca.crt / pip.conf / wheels/ into a folder
# of the build context and pass it as BUILD_ENV: only the builder stage sees it, the final image
# copies the virtual environment and nothing else from that stage (docs/deploy.md).

# The base of both stages: Debian 12 with Python 3.11 and OpenJDK 17 in its archive.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
ARG DEVICE=cpu
# Where torch comes from: PyTorch's CPU index for CPU images; PyPI (CUDA wheels) for DEVICE=gpu.
ARG TORCH_INDEX_URL=""
ARG BUILD_ENV=deploy/build-env
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY ${BUILD_ENV}/ /build-env/
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/runtime.txt /tmp/runtime.txt
RUN if [ -f /build-env/ca.crt ]; then export PIP_CERT=/build-env/ca.crt; fi \
    && if [ -f /build-env/pip.conf ]; then export PIP_CONFIG_FILE=/build-env/pip.conf; fi \
    && if [ -d /build-env/wheels ]; then export PIP_FIND_LINKS=/build-env/wheels; fi \
    && index="${TORCH_INDEX_URL:-$([ "${DEVICE}" = gpu ] && echo https://pypi.org/simple || echo https://download.pytorch.org/whl/cpu)}" \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --extra-index-url "${index}" -r /tmp/runtime.txt \
    && /opt/venv/bin/python -c "import torch, captum, spacy, safetensors, ts; print('torch', torch.__version__)"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="imdb-sentiment" \
      org.opencontainers.image.description="IMDB sentiment CNN with Layer IG explanations on TorchServe 0.12"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A JRE for TorchServe's frontend, Python for its workers; no compilers, no pip cache, no apt lists.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/model-server --shell /usr/sbin/nologin model-server
COPY --from=builder /opt/venv /opt/venv
# Root-owned and not writable by user 1000: the model store is read-only even without --read-only.
COPY deploy/storage/config/config.properties metrics.yaml /mnt/models/config/
COPY model_store/imdb_sentiment.mar /mnt/models/model-store/
# NVIDIA's container runtime mounts the driver when these are set; CPU images ignore them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    TEMP=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
WORKDIR /home/model-server
EXPOSE 8080 8082
CMD ["torchserve", "--foreground", "--model-store=/mnt/models/model-store", "--ts-config=/mnt/models/config/config.properties"]
