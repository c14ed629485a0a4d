# stepd server image: `docker build -t stepd .` then
# `docker run -p 50051:50051 -v stepd-data:/data stepd`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

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
CMD ["stepd", "serve", "--address", "0.0.0.0:50051", "--database", "/data/stepd.db"]
