# A chat frontend (Discord; `qvl discord`): no GPU, no model; the CPU build of torch
# only satisfies the package's dependency.
#   docker build -f docker/frontend.Dockerfile -t qvl-frontend .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qvl qvl
COPY bots bots
COPY worker worker
COPY storage storage
COPY cli cli
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
HEALTHCHECK --interval=30s --timeout=10s \
  CMD python -c "import os, redis; redis.Redis.from_url(os.environ['REDIS_URL']).ping()" || exit 1
CMD ["qvl", "discord"]
