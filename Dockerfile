# syntax=docker/dockerfile:1

# trainwire on the GPU: the official PyTorch CUDA runtime image (Python, CUDA 12.8 and
# cuDNN 9 libraries, and a CUDA build of torch) plus the service. Build with
#   docker build -t trainwire .
# and see docs/docker.md for running it. Another base can be chosen with
#   --build-arg BASE_IMAGE=pytorch/pytorch:<version>-cuda<x.y>-cudnn9-runtime
# A CPU image: any base with Python 3.11+ as `python` and a CPU build of torch, and
#   --build-arg BASE_IMAGE=<that image> --build-arg REQUIRE_CUDA=0
ARG BASE_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# 1: the build stops unless the base's torch is a CUDA build (the GPU image); 0: a CPU image.
ARG REQUIRE_CUDA=1

LABEL org.opencontainers.image.title="trainwire" \
      org.opencontainers.image.description="Training runs of 'Learning PyTorch with Examples' as a web service with live loss streams"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# The base image's torch is a CUDA build matched to the CUDA libraries in the image. A plain
# `pip install .` could swap it for another wheel (PyPI's default build, possibly for another
# CUDA, or a CPU-only one), so every install below runs with a constraints file that pins torch
# to the exact version already installed (e.g. torch==2.10.0+cu128): pip then treats the
# requirement "torch>=2.4" as satisfied and leaves torch alone, and fails loudly instead of
# replacing it should a dependency ever ask for another torch. The version is read from the
# installed distribution's metadata (what `pip freeze | grep ^torch==` shows), which also works
# where pip freeze would print a file URL instead of a version.
RUN python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' \
        > /tmp/torch-constraint.txt \
    && cat /tmp/torch-constraint.txt

# Dependencies first, from pyproject.toml alone, so that editing the code does not
# reinstall them: the service's, PostgreSQL's driver (TRAINWIRE_DATABASE_URL=postgresql+psycopg://...)
# and Ray (TRAINWIRE_BACKEND=ray; the same image also runs a Ray worker node: docs/ray.md).
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; o = p["optional-dependencies"]; print("\n".join(p["dependencies"] + o["postgres"] + o["ray"]))' \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -c /tmp/torch-constraint.txt -r /tmp/requirements.txt

# Then the service itself; its dependencies are already in place. The check at the end runs
# in isolated mode (-I), so that it imports the installed packages rather than ./app, and
# (unless REQUIRE_CUDA=0) stops the build should torch have lost its CUDA build after all.
COPY README.md ./
COPY app/ app/
COPY workers/ workers/
COPY trainwire/ trainwire/
RUN pip install --no-cache-dir --no-deps -c /tmp/torch-constraint.txt . \
    && rm -rf /src/build /src/*.egg-info \
    && python -I -c 'import os, app, workers, workers.ray_slot, trainwire.cli, torch, ray; assert torch.version.cuda or os.environ["REQUIRE_CUDA"] == "0", "torch is not a CUDA build (REQUIRE_CUDA=0 builds a CPU image)"; print("torch", torch.__version__, "CUDA", torch.version.cuda, "ray", ray.__version__)'

# An unprivileged user owns the data volume; the code stays root-owned and read-only to it.
RUN groupadd --system --gid 10001 trainwire \
    && useradd --system --no-log-init --uid 10001 --gid trainwire \
        --create-home --home-dir /home/trainwire --shell /usr/sbin/nologin trainwire \
    && mkdir -p /data \
    && chown trainwire:trainwire /data

# The SQLite store lives on the volume, so jobs and their losses survive a new container.
ENV TRAINWIRE_DATABASE_URL=sqlite:////data/trainwire.db
VOLUME ["/data"]

USER 10001:10001
WORKDIR /home/trainwire

# The port the server listens on, and the one the health check asks: change both at once with
# `docker run -e TRAINWIRE_PORT=9000` (with --network host, or publish -p 9000:9000).
ENV TRAINWIRE_PORT=8000
EXPOSE 8000

# Healthy once /readyz answers 200 (database open, every worker process up) on $TRAINWIRE_PORT.
# The request raises on a 503 or a refused connection, and python then exits 1; it bypasses any
# HTTP_PROXY the container may be given. The image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/readyz' % os.environ.get('TRAINWIRE_PORT', '8000'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# The server shuts down cleanly on SIGTERM (compose.yaml allows it 15 s before a SIGKILL): the
# shell reads the port and then `exec`s the server, which becomes PID 1 and gets the signal itself.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "exec trainwire serve --host 0.0.0.0 --port \"${TRAINWIRE_PORT:-8000}\""]
