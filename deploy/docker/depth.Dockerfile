# syntax=docker/dockerfile:1
# GFlow depth service: MASt3R (with its dust3r and croco parts, from their repositories at pinned
# commits) and the offline backend that needs no weights. The checkpoint is mounted read-only at
# /weights, never baked in. Build from the repository root:
#   docker build -f deploy/docker/depth.Dockerfile -t gflow-depth .                        # CUDA
#   docker build -f deploy/docker/depth.Dockerfile --build-arg VARIANT=cpu -t gflow-depth:cpu .
# MASt3R, DUSt3R and CroCo code and checkpoints are licensed CC BY-NC-SA 4.0 (non-commercial).
ARG VARIANT=cuda
ARG CPU_IMAGE=ubuntu:24.04
# The CPU builder's base; deploy/lab/ builds one with the dependencies installed (same distro).
ARG CPU_BUILDER_IMAGE=${CPU_IMAGE}
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# The CUDA builder needs nvcc to compile CroCo's RoPE kernels (curope).
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04
# An image holding only a MASt3R checkout at MAST3R_COMMIT (with dust3r and croco) at its root,
# used instead of the git clone where GitHub is unreachable (deploy/lab/build-images.sh makes one
# from ../shared/third_party/mast3r). With BuildKit, `--build-context mast3r-source=DIR` does the
# same from a folder. The default, scratch, is empty: the builder clones.
ARG MAST3R_SOURCE_IMAGE=scratch

# ---- MASt3R sources given locally (empty by default) ------------------------------------------
# hadolint ignore=DL3006
FROM ${MAST3R_SOURCE_IMAGE} AS mast3r-source

# ---- builder: venv with the project, MASt3R at pinned commits ---------------------------------
FROM ${CUDA_DEVEL_IMAGE} AS builder-cuda
FROM ${CPU_BUILDER_IMAGE} AS builder-cpu
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS builder
ARG VARIANT
# torch stays at the project's pin; only its build (CPU or CUDA channel) follows VARIANT.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_CUDA_CHANNEL=cu128
# naver/mast3r and the submodule commits that commit records (checked below).
ARG MAST3R_COMMIT=f5209afc300cec36239a7ac992263f36847bbba0
ARG DUST3R_COMMIT=3cc8c88c413bb9e34c41db0e0eef99c2ee010b12
ARG CROCO_COMMIT=d7de0705845239092414480bd829228723bf20de
# GPU architectures the CUDA kernels are compiled for (there is no GPU to detect at build time):
# Turing, Ampere (A100, RTX 30), Ada (RTX 40, L4), Hopper, Blackwell consumer, plus PTX.
ARG CUDA_ARCHS="7.5;8.0;8.6;8.9;9.0;12.0+PTX"
COPY deploy/docker/install-python.sh deploy/docker/build-venv.sh deploy/docker/get-model-code.sh \
     /tmp/
RUN /tmp/install-python.sh git python3-dev g++
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY services services
# The project with its mast3r extra (pyproject.toml): MASt3R's runtime imports, without its
# demo/training extras and without opencv-python, which would clash with opencv-python-headless.
RUN PROJECT_EXTRAS=mast3r /tmp/build-venv.sh
# MASt3R from mast3r-source, else cloned at the pins; MAST3R_COMMIT=none leaves it out (the
# backend then reports unavailable in Describe). Then the build imports it as the service will.
COPY --from=mast3r-source / /tmp/mast3r-source/
RUN /tmp/get-model-code.sh /opt/mast3r "$MAST3R_COMMIT" https://github.com/naver/mast3r \
        /tmp/mast3r-source "dust3r=$DUST3R_COMMIT" "dust3r/croco=$CROCO_COMMIT" \
    && mkdir -p /opt/mast3r/dust3r/croco/models/curope \
    && { test "$MAST3R_COMMIT" = none || PYTHONPATH=/opt/mast3r:/opt/mast3r/dust3r \
        /opt/venv/bin/python -c "import services.common.torchvision_ops as ops; \
ops.import_beside_cpu_torch('mast3r.model'); ops.import_beside_cpu_torch('mast3r.cloud_opt.sparse_ga')"; }
# CroCo's CUDA RoPE kernels (optional: without them MASt3R falls back to a slower PyTorch RoPE).
WORKDIR /opt/mast3r/dust3r/croco/models/curope
RUN if [ "$VARIANT" = cuda ]; then /opt/venv/bin/pip install --no-cache-dir "setuptools>=68" \
        && TORCH_CUDA_ARCH_LIST="$CUDA_ARCHS" /opt/venv/bin/python setup.py build_ext --inplace \
        && rm -rf build; fi

# ---- runtime ----------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
FROM ${CPU_IMAGE} AS runtime-cpu
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
LABEL org.opencontainers.image.title="gflow-depth" \
      org.opencontainers.image.description="GFlow depth service (gRPC): MASt3R and offline depth"
COPY deploy/docker/install-python.sh /tmp/
RUN /tmp/install-python.sh && rm /tmp/install-python.sh \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin gflow
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/mast3r /opt/mast3r
COPY deploy/docker/entrypoint.sh deploy/docker/check_weights.py deploy/docker/healthcheck.py \
     /opt/gflow/
# mast3r imports dust3r, which puts croco on sys.path itself. HF_HUB_OFFLINE: nothing is fetched.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/mast3r:/opt/mast3r/dust3r \
    HF_HUB_OFFLINE=1 \
    GFLOW_STAGE=depth \
    GFLOW_PORT=50051 \
    GFLOW_MAST3R_CHECKPOINT=/weights/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth
USER 10001
WORKDIR /home/gflow
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/gflow/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/opt/gflow/entrypoint.sh"]
CMD ["--host", "0.0.0.0"]
