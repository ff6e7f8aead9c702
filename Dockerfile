# The gateway and the simulator, for docker-compose.yml (linux/arm64 on a Raspberry Pi, or amd64).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY sim ./sim
RUN pip install --no-cache-dir . && useradd --system --no-create-home edgekit
USER edgekit
CMD ["edgekit-gateway", "run"]
