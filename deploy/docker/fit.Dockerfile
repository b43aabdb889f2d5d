# syntax=docker/dockerfile:1
# GFlow fit service (stateless worker; scale it out). The CUDA image carries gsplat with its CUDA
# extension compiled at image build time for the architectures below, so a worker starts in
# seconds instead of JIT-compiling for minutes; the CPU variant renders with the project's PyTorch
# rasteriser. Build from the repository root:
#   docker build -f deploy/docker/fit.Dockerfile -t gflow-fit .                            # CUDA
#   docker build -f deploy/docker/fit.Dockerfile --build-arg VARIANT=cpu -t gflow-fit:cpu .
ARG VARIANT=cuda
ARG CPU_IMAGE=ubuntu:24.04
# The CPU builder's base; deploy/lab/ builds one with the dependencies installed (same distro).
ARG CPU_BUILDER_IMAGE=${CPU_IMAGE}
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# The CUDA builder needs nvcc to compile gsplat.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04

# ---- builder: venv with the project and a compiled gsplat -------------------------------------
FROM ${CUDA_DEVEL_IMAGE} AS builder-cuda
FROM ${CPU_BUILDER_IMAGE} AS builder-cpu
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS builder
ARG VARIANT
# torch stays at the project's pin; only its build (CPU or CUDA channel) follows VARIANT.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_CUDA_CHANNEL=cu128
# The version the renderer's parity test holds (services/fit/rasterizer_gsplat.py).
ARG GSPLAT_VERSION=1.5.3
# GPU architectures gsplat is compiled for (there is no GPU to detect at build time):
# Turing, Ampere (A100, RTX 30), Ada (RTX 40, L4), Hopper, Blackwell consumer, plus PTX.
ARG CUDA_ARCHS="7.5;8.0;8.6;8.9;9.0;12.0+PTX"
# Parallel nvcc jobs; each takes a few GB of memory.
ARG MAX_JOBS=4
COPY deploy/docker/install-python.sh deploy/docker/build-venv.sh /tmp/
RUN /tmp/install-python.sh python3-dev g++
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY services services
RUN /tmp/build-venv.sh
# gsplat from its source release, so setup.py builds the `gsplat.csrc` extension now (the PyPI
# wheel would JIT-compile on first use, which needs nvcc in the runtime image). Then import it:
# gsplat.cuda._backend loads gsplat.csrc and leaves _C None when it cannot.
RUN if [ "$VARIANT" = cuda ]; then \
        /opt/venv/bin/pip install --no-cache-dir "setuptools>=68" wheel ninja \
        && TORCH_CUDA_ARCH_LIST="$CUDA_ARCHS" /opt/venv/bin/pip install --no-cache-dir \
            --no-build-isolation --no-binary gsplat "gsplat==$GSPLAT_VERSION" \
        && /opt/venv/bin/python -c "from gsplat.cuda._backend import _C; assert _C is not None"; \
    fi

# ---- runtime ----------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
FROM ${CPU_IMAGE} AS runtime-cpu
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
ARG VARIANT
LABEL org.opencontainers.image.title="gflow-fit" \
      org.opencontainers.image.description="GFlow fitting worker (gRPC): Gaussians and cameras"
COPY deploy/docker/install-python.sh /tmp/
RUN /tmp/install-python.sh && rm /tmp/install-python.sh \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin gflow
COPY --from=builder /opt/venv /opt/venv
# The compiled extension must load without nvcc (no JIT fallback in the runtime image).
RUN if [ "$VARIANT" = cuda ]; then /opt/venv/bin/python -c "import torch, gsplat.csrc"; fi
COPY deploy/docker/entrypoint.sh deploy/docker/check_weights.py deploy/docker/healthcheck.py \
     /opt/gflow/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GFLOW_STAGE=fit \
    GFLOW_PORT=50054
USER 10001
WORKDIR /home/gflow
EXPOSE 50054
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/gflow/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/opt/gflow/entrypoint.sh"]
CMD ["--host", "0.0.0.0"]
