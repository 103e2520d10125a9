# glance-poller: a small image that runs as a non-root user with its state on a volume.
#   docker build -t glance-poller .
# The build stage installs the package and its dependencies under /install; the runtime stage
# copies only that tree, so no wheel, build tool or pip cache reaches the image.
# The package is pure Python: no compiler or toolchain is needed.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poller ./poller
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --prefix=/install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 poller \
    && useradd --system --uid 10001 --gid poller --home-dir /var/lib/glance-poller \
       --create-home poller
COPY --from=build /install /usr/local
# Every setting has a default or an environment name: the image needs no configuration file.
# This one only documents the keys; mount your own and point POLLER_CONFIG at it if you want one.
COPY config/poller.example.toml /etc/glance-poller/poller.example.toml
# Numeric, so that runtimes which check for a non-root user (runAsNonRoot) can verify it.
USER 10001:10001
WORKDIR /var/lib/glance-poller
ENV POLLER_STATE_PATH=/var/lib/glance-poller/state.sqlite3 \
    POLLER_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/glance-poller"]
# /metrics, /healthz and /readyz ([server] port, 9720 unless POLLER_SERVER__PORT says otherwise).
EXPOSE 9720
# Alive means /healthz answers 200; the image has no curl, so Python asks, on the port the
# environment configures (POLLER_SERVER__PORT, default 9720). A port set only in a mounted
# TOML file is not seen here: set POLLER_SERVER__PORT instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; port=os.environ.get('POLLER_SERVER__PORT') or '9720'; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=3).status == 200 else 1)"]
ENTRYPOINT ["glance-poller"]
# Configuration from the environment alone (GLANCE_PARTNER_ID, GLANCE_API_KEY or
# GLANCE_API_KEY_FILE, KAFKA_BOOTSTRAP_SERVERS...); a file only if POLLER_CONFIG names one.
CMD ["run"]
