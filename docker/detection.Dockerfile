# The text-detection service on one NVIDIA GPU: Paddle Inference (paddlepaddle-gpu, CUDA 12.6) with the TensorRT
# runtime libraries, and PP-OCRv5_server_det baked in at build time (the container never downloads at run time).
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY services ./services
# The detection extra pins the CPU paddlepaddle wheel; swap it for the CUDA 12.6 build of the same version
# (served from Paddle's own package index), and add TensorRT's runtime libraries for the TensorRT subgraph.
RUN pip install '.[detection]' \
    && pip uninstall -y paddlepaddle \
    && pip install paddlepaddle-gpu==3.3.1 --index-url https://www.paddlepaddle.org.cn/packages/stable/cu126/ \
    && pip install tensorrt-cu12-libs==10.5.0
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs:$LD_LIBRARY_PATH
# PaddleX's official PP-OCRv5_server_det inference model, fetched once by the service's own registry code.
RUN python -c "from pathlib import Path; \
from services.detection.models import download_model; \
from services.detection.settings import PADDLEX_MODEL_URL; \
print(download_model('PP-OCRv5_server_det', PADDLEX_MODEL_URL, Path('/opt/models'), 600))" \
    && useradd --system --uid 10001 detbooth && mkdir -p /cache/trt && chown -R detbooth /cache
USER detbooth
# Exact-shape batching (boxes equal PaddleOCR's) on the GPU, TensorRT on: one dynamic-shape engine whose range
# comes from the buckets (DETBOOTH_DETECTION_BUCKET_MODE=padded: one static engine per bucket plus an overflow
# one), serialised under /cache/trt (a volume in docker-compose.yml) so a restart does not rebuild it. fp16/int8
# TensorRT (int8 calibrated on the rendered calibration set) serves only after the precision guard accepted it.
ENV DETBOOTH_DETECTION_HOST=0.0.0.0 DETBOOTH_DETECTION_PORT=8001 \
    DETBOOTH_DETECTION_MODEL=PP-OCRv5_server_det DETBOOTH_DETECTION_PADDLEX_CACHE_DIR=/opt/models \
    DETBOOTH_DETECTION_ALLOW_DOWNLOAD=false DETBOOTH_DETECTION_ENGINE=paddle DETBOOTH_DETECTION_DEVICE=gpu \
    DETBOOTH_DETECTION_USE_TENSORRT=true DETBOOTH_DETECTION_TRT_CACHE_DIR=/cache/trt \
    DETBOOTH_DETECTION_DATA_DIR=/cache DETBOOTH_DETECTION_MAX_BATCH_SIZE=16 \
    DETBOOTH_DETECTION_ENGINE_WORKERS=2 DETBOOTH_DETECTION_MAX_BATCH_PIXELS=0
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/readyz', timeout=2)" || exit 1
CMD ["python", "-m", "services.detection"]
