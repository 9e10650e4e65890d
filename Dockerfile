# extauthz container image. Build: docker build -t extauthz:0.1.0 .
# (No container engine runs where this project is tested, so this file is not built in CI:
# keep it plain.)

# -- build: a wheel of extauthz and of every pinned dependency, with pip's build tooling.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
RUN python -m venv /opt/extauthz \
 && /opt/extauthz/bin/pip install --no-compile . \
 && /opt/extauthz/bin/python -m compileall -q /opt/extauthz/lib \
 && /opt/extauthz/bin/python -m pip uninstall --yes --quiet pip

# -- final: the venv only; no pip, compilers or sources.
FROM python:3.11-slim-bookworm
# A fixed numeric non-root user, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 extauthz \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin extauthz \
 && rm -rf /usr/local/lib/python3.11/site-packages/pip /usr/local/bin/pip*
COPY --from=build /opt/extauthz /opt/extauthz
ENV PATH=/opt/extauthz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC ext_authz (+ gRPC health), and /healthz /readyz /metrics. The config must set
# server.grpc_listen / http_listen to 0.0.0.0 to be reachable from outside the container.
EXPOSE 9001 9090
# Liveness of the process, on the HTTP listener's default port; Kubernetes uses its own
# gRPC probes instead (see helm/extauthz).
HEALTHCHECK --interval=10s --timeout=2s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["extauthz", "serve"]
CMD ["--config", "/etc/extauthz/config/config.yaml"]
