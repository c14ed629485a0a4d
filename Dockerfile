# stepd server image: `docker build -t stepd .`
# It listens on 0.0.0.0, so it refuses to start without API keys, TLS and a hook
# secret (docs/security.md#docker), or STEPD_INSECURE=1. Make the first admin key
# on the volume, then start it with the certificates and the secret mounted:
#   docker run --rm -v stepd-data:/data stepd \
#     stepd keys create --role admin --name ops --database /data/stepd.db
#   docker run -p 50051:50051 -p 50052:50052 -v stepd-data:/data \
#     -v /etc/stepd:/etc/stepd:ro \
#     -e STEPD_TLS_CERT=/etc/stepd/server.pem -e STEPD_TLS_KEY=/etc/stepd/server.key \
#     -e STEPD_HOOK_SECRET_FILE=/etc/stepd/hook-secret \
#     -e STEPD_TLS_CA=/etc/stepd/ca.pem stepd
# (STEPD_TLS_CA lets the HEALTHCHECK trust the server's certificate.) Clients pass
# their key as `authorization: Bearer <key>` (Client(api_key=...), --api-key).
# Every setting comes from a STEPD_* variable (`-e STEPD_DATABASE=postgresql://...`
# or `-e STEPD_LEASE_TIMEOUT=60`); `stepd serve --help` lists them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STEPD_ADDRESS=0.0.0.0:50051 \
    STEPD_DATABASE=/data/stepd.db

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY clients ./clients
COPY service ./service
COPY worker_sdk ./worker_sdk
# With the OpenTelemetry extra, so `-e STEPD_OTEL=1` (docs/observability.md) works.
RUN pip install ".[server,otel]" \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin stepd \
    && mkdir -p /data \
    && chown stepd:stepd /data

USER stepd
VOLUME ["/data"]
EXPOSE 50051 50052
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["stepd", "health", "--timeout", "5"]
CMD ["stepd", "serve"]
