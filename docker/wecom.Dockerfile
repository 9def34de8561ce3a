# The WeCom frontend (`qvl wecom`): WeCom's AI bot over its long connection. No GPU, no
# model; the CPU build of torch only satisfies the package's dependency.
#   docker build -f docker/wecom.Dockerfile -t qvl-wecom .
#   docker run --env-file .env qvl-wecom      # WECOM_BOT_ID, WECOM_BOT_SECRET, REDIS_URL, DATABASE_URL
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qvl qvl
COPY bots bots
COPY worker worker
COPY storage storage
COPY cli cli
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir '.[wecom]'
# Healthy while connected to WeCom: the frontend renews a mark under $QVL_DATA_DIR/health/
# while it is; `python -m bots.health` exits 1 when the mark is missing or older than 120 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
  CMD python -m bots.health wecom || exit 1
CMD ["qvl", "wecom"]
