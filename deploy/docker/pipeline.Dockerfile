# syntax=docker/dockerfile:1
# GFlow pipeline service: ingest and orchestration; it calls the stage services (--remote.* flags)
# and runs no model itself, so its image is the slim CPU one (CPU build of the pinned torch).
# Build from the repository root:
#   docker build -f deploy/docker/pipeline.Dockerfile -t gflow-pipeline .
ARG CPU_IMAGE=ubuntu:24.04
# The CPU builder's base; deploy/lab/ builds one with the dependencies installed (same distro).
ARG CPU_BUILDER_IMAGE=${CPU_IMAGE}

FROM ${CPU_BUILDER_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
COPY deploy/docker/install-python.sh deploy/docker/build-venv.sh /tmp/
RUN /tmp/install-python.sh
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY services services
RUN VARIANT=cpu TORCH_CUDA_CHANNEL=none /tmp/build-venv.sh

FROM ${CPU_IMAGE}
LABEL org.opencontainers.image.title="gflow-pipeline" \
      org.opencontainers.image.description="GFlow pipeline service (gRPC): ingest + stage calls"
COPY deploy/docker/install-python.sh /tmp/
RUN /tmp/install-python.sh && rm /tmp/install-python.sh \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin gflow
COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/entrypoint.sh deploy/docker/check_weights.py deploy/docker/healthcheck.py \
     /opt/gflow/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GFLOW_STAGE=pipeline \
    GFLOW_PORT=50050
USER 10001
WORKDIR /home/gflow
EXPOSE 50050
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/gflow/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/opt/gflow/entrypoint.sh"]
# The pipeline server nests its listening flags under --server.* (its --remote.* name the stages).
CMD ["--server.host", "0.0.0.0"]
