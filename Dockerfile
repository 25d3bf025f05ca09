# sidekick as a container: `docker run --net host -v /var/run/docker.sock:/var/run/docker.sock
# sidekick run ...` (see units/sidekick-docker.service). Build with scripts/build-image, which
# makes the base image offline (scripts/build-base-image), sidekick's wheel (the distribution
# docker-etcd-sidekick) and a wheelhouse, so the build installs that wheel and needs no index;
# a plain `docker build .` works too where pip can reach an index (pip builds the wheel).
#
# The base image is an ARG so it can be swapped for any Debian-like image with python3 and
# python3-venv (e.g. --build-arg BASE_IMAGE=debian:bookworm-slim plus those packages).
ARG BASE_IMAGE=sidekick-base:bookworm

# -- build: a venv with sidekick and its dependencies -----------------------------------------
FROM ${BASE_IMAGE} AS build
COPY . /src
RUN python3 -m venv /opt/sidekick \
 && if [ -d /src/wheels ]; then \
      /opt/sidekick/bin/pip install --no-cache-dir --no-compile --no-index \
        --find-links /src/wheels docker-etcd-sidekick; \
    else \
      /opt/sidekick/bin/pip install --no-cache-dir --no-compile /src; \
    fi \
 && /opt/sidekick/bin/pip uninstall --yes --quiet pip setuptools \
 && /opt/sidekick/bin/python -m compileall -q /opt/sidekick/lib \
 && /opt/sidekick/bin/sidekick --version

# -- the image: the base plus that venv; no compiler, no pip, no caches ------------------------
FROM ${BASE_IMAGE}
COPY --from=build /opt/sidekick /opt/sidekick
ENV PATH=/opt/sidekick/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The agent talks to the Docker socket, which root owns: it runs as root, with nothing else.
# The health check asks the agent's own /healthz (200 while Docker and etcd answer and the
# lease is alive): it reads, it never writes to etcd. `sidekick doctor` is for people.
ENV SIDEKICK_METRICS_ADDRESS=127.0.0.1:9476
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://%s/healthz' % os.environ['SIDEKICK_METRICS_ADDRESS'], timeout=5)"]
ENTRYPOINT ["sidekick"]
CMD ["run"]
