# glance-poller: a small image that runs as a non-root user with its state on a volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poller ./poller
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/glance-poller --create-home poller
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/poller.example.toml /etc/glance-poller/poller.example.toml
USER poller
WORKDIR /var/lib/glance-poller
ENV POLLER_STATE_PATH=/var/lib/glance-poller/state.sqlite3 \
    POLLER_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/glance-poller"]
ENTRYPOINT ["glance-poller"]
CMD ["run", "--config", "/etc/glance-poller/poller.toml"]
