# jobserv-bridge: docker build -t jobserv-bridge . && see docker-compose.yml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY templates ./templates
RUN pip install . && useradd --system --uid 10001 --home-dir /var/lib/jobserv-bridge bridge \
    && mkdir -p /var/lib/jobserv-bridge /etc/jobserv-bridge \
    && chown bridge /var/lib/jobserv-bridge

# The outbox lives on this volume: set [store] path = "/var/lib/jobserv-bridge/bridge.sqlite3".
VOLUME ["/var/lib/jobserv-bridge"]
USER bridge
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["jobserv-bridge"]
CMD ["serve", "--config", "/etc/jobserv-bridge/config.toml"]
