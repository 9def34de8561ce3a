# The WeChat frontend's own image: python-wechaty's pins (pyee<12, urllib3<2) live here and
# in the `wechat` extra, never in the worker's image. It needs no GPU and no model.
#   docker build -f docker/wechat.Dockerfile -t qvl-wechat .
#   docker run --env-file .env qvl-wechat     # WECHATY_PUPPET_SERVICE_ENDPOINT, _TOKEN,
#                                             # REDIS_URL, DATABASE_URL
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qvl qvl
COPY bots bots
COPY worker worker
COPY storage storage
COPY cli cli
# torch is a dependency of the package; the CPU build keeps this image small.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir '.[wechat]'
# Healthy while connected to WeChat: the frontend renews a mark under $QVL_DATA_DIR/health/
# while it is; `python -m bots.health` exits 1 when the mark is missing or older than 120 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
  CMD python -m bots.health wechat || exit 1
CMD ["qvl", "wechat"]
