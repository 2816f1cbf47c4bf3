# The DreamBooth worker: CUDA PyTorch, diffusers, Lightning; one Celery worker per GPU.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 HF_HOME=/data/hf
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY services ./services
RUN python3 -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
    && python3 -m pip install '.[dreambooth,s3]' && python3 -m pip install --no-deps open_clip_torch==3.3.0 \
    && useradd --system --uid 10001 detbooth && mkdir -p /data && chown detbooth /data
USER detbooth
ENV DETBOOTH_DATA_DIR=/data
HEALTHCHECK --interval=30s --timeout=10s --retries=3 \
  CMD celery -A services.dreambooth.tasks inspect ping -d "detbooth@$HOSTNAME" --timeout 5 || exit 1
CMD ["celery", "-A", "services.dreambooth.tasks", "worker", "-Q", "finetune,generate", "-c", "1", \
     "--loglevel", "INFO", "-n", "detbooth@%h"]
