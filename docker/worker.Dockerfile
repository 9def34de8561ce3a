# The GPU worker: runs the model. torch from PyPI is the CUDA build on Linux.
#   docker build -f docker/worker.Dockerfile -t qvl-worker .
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-wqy-zenhei \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qvl qvl
COPY bots bots
COPY worker worker
COPY storage storage
COPY cli cli
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir .
ENV QVL_DATA_DIR=/data HF_HOME=/data/hf
VOLUME /data
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s \
  CMD celery -A worker.main inspect ping -d "qvl@$(hostname)" --timeout 5 || exit 1
CMD ["qvl", "worker"]
