# The shared builder base of the locally built CPU images (build-images.sh): the venv /opt/venv
# with torch (the local CPU wheel in wheels/) and every dependency of the project, at the versions
# of the venv that built it (wheels/constraints.txt). The services' builder stages start from it
# (CPU_BUILDER_IMAGE), so each only adds the project. Not a runtime image.
ARG CPU_IMAGE=gflow-base:bookworm
FROM ${CPU_IMAGE}
ARG TORCH_VERSION=2.13.0
COPY deploy/docker/install-python.sh deploy/docker/build-venv.sh /tmp/
RUN /tmp/install-python.sh
COPY deploy/lab/wheels /opt/wheels
WORKDIR /src
# Only what the dependencies depend on, so a change of the code does not rebuild this image.
COPY pyproject.toml ./
COPY proto proto
# build-venv.sh in the services' builders sees TORCH_WHEEL_DIR too: torch is already there, and
# the constraints keep every other version; pip trusts this machine's CA bundle. The project
# itself is left to those builds.
ENV TORCH_WHEEL_DIR=/opt/wheels \
    PIP_CERT=/opt/wheels/ca-certificates.crt
RUN touch README.md && mkdir services \
    && VARIANT=cpu TORCH_CUDA_CHANNEL=none TORCHVISION_VERSION=none /tmp/build-venv.sh \
    && /opt/venv/bin/pip uninstall -y gflow-services \
    && rm -rf /src/*
