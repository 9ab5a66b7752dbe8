# syntax=docker/dockerfile:1

# trainwire on the GPU: the official PyTorch CUDA runtime image (Python, CUDA 12.8 and
# cuDNN 9 libraries, and a CUDA build of torch) plus the service. Build with
#   docker build -t trainwire .
# and see docs/docker.md for running it. Another base can be chosen with
#   --build-arg BASE_IMAGE=pytorch/pytorch:<version>-cuda<x.y>-cudnn9-runtime
ARG BASE_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

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
# stops the build should torch have lost its CUDA build after all.
COPY README.md ./
COPY app/ app/
COPY workers/ workers/
COPY trainwire/ trainwire/
RUN pip install --no-cache-dir --no-deps -c /tmp/torch-constraint.txt . \
    && rm -rf /src/build /src/*.egg-info \
    && python -I -c 'import app, workers, workers.ray_slot, trainwire.cli, torch, ray; assert torch.version.cuda, "torch is not a CUDA build"; print("torch", torch.__version__, "CUDA", torch.version.cuda, "ray", ray.__version__)'

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

EXPOSE 8000

# Healthy once /readyz answers 200 (database open, every worker process up). The request
# raises on a 503 or a refused connection, and python then exits 1; it bypasses any
# HTTP_PROXY the container may be given. The image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/readyz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# The server shuts down cleanly on SIGTERM (compose.yaml allows it 15 s before a SIGKILL).
# Exec form, so that the server itself is PID 1 and receives the signal, not a shell.
STOPSIGNAL SIGTERM
CMD ["trainwire", "serve", "--host", "0.0.0.0", "--port", "8000"]
