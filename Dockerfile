# stepd server image: `docker build -t stepd .` then
# `docker run -p 50051:50051 -v stepd-data:/data stepd`.
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
RUN pip install ".[server]" \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin stepd \
    && mkdir -p /data \
    && chown stepd:stepd /data

USER stepd
VOLUME ["/data"]
EXPOSE 50051
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["stepd", "health", "--timeout", "5"]
CMD ["stepd", "serve"]
