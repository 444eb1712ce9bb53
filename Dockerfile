# dhashmap node: `docker build -t dhashmap .`, then `docker compose up` (docker-compose.yml).
# Settings come from the environment (NODE_ID, PORT, DISCOVERY_MODE, SEED_NODES, ...; see
# docs/configuration.md) or from flags after the image name: `docker run dhashmap --node-id n1`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY setup.py README.md ./
COPY twisted ./twisted
COPY twisted_dhm ./twisted_dhm
RUN python3 -m venv /opt/dhashmap \
    && /opt/dhashmap/bin/pip install --no-cache-dir . \
    && /opt/dhashmap/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 dhashmap \
    && useradd --uid 10001 --gid dhashmap --no-log-init --home-dir /var/lib/dhashmap --create-home \
       --shell /usr/sbin/nologin dhashmap
COPY --from=build /opt/dhashmap /opt/dhashmap
ENV PATH=/opt/dhashmap/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0 \
    DATA_DIR=/var/lib/dhashmap/data \
    LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/dhashmap
VOLUME ["/var/lib/dhashmap"]
# REST, native protocol, gRPC, SWIM gossip (UDP and TCP).
EXPOSE 8080/tcp 7000/tcp 9090/tcp 7946/tcp 7946/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "dhashmap"]
