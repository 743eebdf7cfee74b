# csbot: WeChat customer-service bot service.
#   docker build -t csbot .
#   docker run -p 8080:8080 -v csbot-data:/data -e CSBOT_APPID=... -e CSBOT_TOKEN=... csbot
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CSBOT_HOST=0.0.0.0 \
    CSBOT_PORT=8080 \
    CSBOT_DATABASE_URL=sqlite+aiosqlite:////data/csbot.db \
    CSBOT_DATA_DIR=/data \
    CSBOT_HANDLERS=/app/handlers

WORKDIR /app
# dependencies first, in their own layer: a change to csbot's code or handlers reuses it
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY csbot ./csbot
COPY migrations ./migrations
RUN pip install --no-deps .
COPY handlers ./handlers

RUN useradd --system --uid 10001 --home-dir /data --create-home csbot \
    && chown -R csbot /data
USER csbot
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os,urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CSBOT_PORT','8080'), timeout=2).status == 200 else 1)"

CMD ["csbot", "serve"]
