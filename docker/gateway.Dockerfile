# The gateway: a slim CPU image (no torch, no paddle).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY services ./services
# The gateway validates fine-tune and generation inputs with the workers' pydantic models only.
# s3: the artifact store may be an s3:// URL (DETBOOTH_ARTIFACTS_URL) shared with the workers.
RUN pip install '.[gateway,s3]' && useradd --system --uid 10001 detbooth && mkdir -p /data && chown detbooth /data
USER detbooth
ENV DETBOOTH_GATEWAY_HOST=0.0.0.0 DETBOOTH_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["python", "-m", "gateway"]
