# The Qwen-VL-Chat worker: the model's own code needs transformers 4.53.3 (see
# worker/engines/remote_code.py), so it gets an image of its own. A CUDA devel base,
# because gptqmodel (for Qwen-VL-Chat-Int4) compiles its kernels at install.
#   docker build -f docker/worker-qwen-vl.Dockerfile -t qvl-worker-qwen-vl .
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv fonts-wqy-zenhei \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qvl qvl
COPY bots bots
COPY worker worker
COPY storage storage
COPY cli cli
RUN pip install --no-cache-dir torch==2.13.0 torchvision==0.28.0 && pip install --no-cache-dir '.[qwen-vl]'
# Int4 (GPTQ): built against the torch above; TORCH_CUDA_ARCH_LIST keeps the build to current GPUs.
ARG GPTQ=1
RUN if [ "$GPTQ" = 1 ]; then TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0" \
      pip install --no-cache-dir --no-build-isolation optimum==1.26.1 gptqmodel==2.2.0; fi
ENV QVL_DATA_DIR=/data HF_HOME=/data/hf QVL_ENGINE=qwen-vl QVL_MODEL=Qwen/Qwen-VL-Chat
VOLUME /data
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s \
  CMD celery -A worker.main inspect ping -d "qvl@$(hostname)" --timeout 5 || exit 1
CMD ["qvl", "worker"]
