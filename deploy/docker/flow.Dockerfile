# syntax=docker/dockerfile:1
# GFlow flow service: OpenCV DIS (no weights, the default), torchvision RAFT and UniMatch (weights
# mounted read-only at /weights, never baked in). Build from the repository root:
#   docker build -f deploy/docker/flow.Dockerfile -t gflow-flow .                          # CUDA
#   docker build -f deploy/docker/flow.Dockerfile --build-arg VARIANT=cpu -t gflow-flow:cpu .
ARG VARIANT=cuda
ARG CPU_IMAGE=ubuntu:24.04
# The CPU builder's base; deploy/lab/ builds one with the dependencies installed (same distro).
ARG CPU_BUILDER_IMAGE=${CPU_IMAGE}
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# An image holding only a UniMatch checkout at UNIMATCH_COMMIT at its root, used instead of the
# git clone where GitHub is unreachable (deploy/lab/build-images.sh makes one from
# ../shared/third_party/unimatch). With BuildKit, `--build-context unimatch-source=DIR` does the
# same from a folder. The default, scratch, is empty: the builder clones.
ARG UNIMATCH_SOURCE_IMAGE=scratch

# ---- UniMatch sources given locally (empty by default) ----------------------------------------
# hadolint ignore=DL3006
FROM ${UNIMATCH_SOURCE_IMAGE} AS unimatch-source

# ---- builder: venv with the project, UniMatch sources at a pinned commit ---------------------
FROM ${CPU_BUILDER_IMAGE} AS builder
ARG VARIANT
# torch stays at the project's pin; only its build (CPU or CUDA channel) follows VARIANT.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_CUDA_CHANNEL=cu128
ARG UNIMATCH_COMMIT=943a99006950ab6c84ea72a72beb147fdd03c19a
COPY deploy/docker/install-python.sh deploy/docker/build-venv.sh deploy/docker/get-model-code.sh \
     /tmp/
RUN /tmp/install-python.sh git
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY services services
RUN /tmp/build-venv.sh && /opt/venv/bin/pip install --no-cache-dir "einops>=0.7,<1"
# UniMatch from unimatch-source, else cloned at the pin; UNIMATCH_COMMIT=none leaves it out (the
# backend then reports unavailable in Describe). Then the build imports it as the service will.
COPY --from=unimatch-source / /tmp/unimatch-source/
RUN /tmp/get-model-code.sh /opt/unimatch "$UNIMATCH_COMMIT" \
        https://github.com/autonomousvision/unimatch /tmp/unimatch-source \
    && { test "$UNIMATCH_COMMIT" = none \
        || PYTHONPATH=/opt/unimatch /opt/venv/bin/python -c "import unimatch.unimatch"; }

# ---- runtime ----------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
FROM ${CPU_IMAGE} AS runtime-cpu
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
LABEL org.opencontainers.image.title="gflow-flow" \
      org.opencontainers.image.description="GFlow optical flow service (gRPC)"
COPY deploy/docker/install-python.sh /tmp/
RUN /tmp/install-python.sh && rm /tmp/install-python.sh \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin gflow
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/unimatch /opt/unimatch
COPY deploy/docker/entrypoint.sh deploy/docker/check_weights.py deploy/docker/healthcheck.py \
     /opt/gflow/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/unimatch \
    GFLOW_STAGE=flow \
    GFLOW_PORT=50052 \
    GFLOW_RAFT_WEIGHTS=/weights/raft_small_C_T_V2-01064c6d.pth \
    GFLOW_UNIMATCH_CHECKPOINT=/weights/gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth
USER 10001
WORKDIR /home/gflow
EXPOSE 50052
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/gflow/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/opt/gflow/entrypoint.sh"]
CMD ["--host", "0.0.0.0"]
