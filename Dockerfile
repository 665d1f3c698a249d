# flowgpt-gateway image. The same image runs the gateway (default) and the
# FlowGpt simulator (`sim`), see docker-compose.yml.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Install (with uvloop, as benchmarked) into the system site-packages, then drop the sources: only the
# installed package and its console script remain.
RUN pip install ".[fast]" \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway

# The runbook the alerts link to, served at GET /runbook.
COPY docs/runbook.md /usr/share/flowgpt-gateway/runbook.md
ENV GATEWAY_RUNBOOK_PATH=/usr/share/flowgpt-gateway/runbook.md

WORKDIR /
USER gateway

EXPOSE 8080

# slim has no curl: use the stdlib. urlopen raises on any non-2xx answer, which
# makes the check fail. GATEWAY_PORT, when set, moves the port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8080') + '/healthz', timeout=3)"]

ENTRYPOINT ["flowgpt-gateway"]
CMD ["serve", "--host", "0.0.0.0"]
