# One slim image for the controller, combiners and clients.
#   docker build -t fedgrpc .
#   docker run fedgrpc controller start --host 0.0.0.0 --mongo-uri mongodb://mongo:27017
# Build stage: make a wheel. Runtime stage: install it (no compilers, no pip cache), run as
# a non-root user, and probe grpc.health.v1 for the health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedgrpc ./fedgrpc
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The examples extra brings scikit-learn for the digits example clients.
RUN pip install "$(ls /wheels/fedgrpc-*.whl)[examples]" && rm -rf /wheels \
    && useradd --create-home --uid 10001 fedgrpc \
    && mkdir -p /data /tokens && chown fedgrpc /data /tokens
COPY --chown=fedgrpc examples /opt/fedgrpc/examples
USER fedgrpc
WORKDIR /home/fedgrpc
VOLUME ["/data"]
# The probe asks the daemon's own port; clients serve nothing and disable it in compose.
ENV FEDGRPC_HEALTH_ADDRESS=127.0.0.1:12080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD fedgrpc health "$FEDGRPC_HEALTH_ADDRESS" || exit 1
ENTRYPOINT ["fedgrpc"]
CMD ["--help"]
