# The edge cache's metrics sidecar (the chart's edgeCache.metrics.image): the official Varnish
# image the chart's edge runs (edgeCache.image), so varnishstat reads varnishd's shared memory
# with the same version, plus Debian's prometheus-varnish-exporter (1.6.1 in bookworm).
# `make images` builds it (deploy/tools/build_images.py: tagged as the chart renders it,
# covid-stats-varnish-exporter:<edgeCache.image.tag>, BASE_IMAGE the chart's edgeCache.image,
# which tests/deploy/test_release.py keeps equal to the default below), `make push` pushes it.
ARG BASE_IMAGE=docker.io/library/varnish:7.6.1
FROM ${BASE_IMAGE}
USER 0
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-varnish-exporter=1.6.1-* \
    && rm -rf /var/lib/apt/lists/*
# The chart runs it as 10001 (edgeCache.podSecurityContext); any non-root user reads the
# work directory varnishd shares.
USER 10001
ENTRYPOINT ["prometheus-varnish-exporter"]
# Labels last: CREATED changes every build, and only this layer is rebuilt for it.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="covid-stats-varnish-exporter" \
      org.opencontainers.image.description="prometheus-varnish-exporter on the edge cache's Varnish image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
