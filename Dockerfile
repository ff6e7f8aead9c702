# The gateway and the simulator, for docker-compose.yml (linux/arm64 on a Raspberry Pi, or amd64).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY sim ./sim
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home --home-dir /var/lib/edgekit edgekit \
    && install -d -o edgekit -g edgekit -m 0750 /var/lib/edgekit
# a named volume mounted here takes this directory's owner on first use
VOLUME /var/lib/edgekit
USER edgekit
CMD ["edgekit-gateway", "run"]
