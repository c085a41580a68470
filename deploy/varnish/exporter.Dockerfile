# The edge cache's metrics sidecar (the chart's edgeCache.metrics.image): the official Varnish
# image the chart's edge runs (edgeCache.image), so varnishstat reads varnishd's shared memory
# with the same version, plus Debian's prometheus-varnish-exporter (1.6.1 in bookworm).
#   podman build -f deploy/varnish/exporter.Dockerfile -t covid-stats-varnish-exporter:7.6.1 deploy/varnish
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
