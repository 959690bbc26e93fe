# bidsapp as a BIDS-App container: `docker run … IMAGE SOURCE OUTPUT participant|group …`.
#
#   docker build -t bidsapp:0.1.0 .
#   docker run --rm --network none bidsapp:0.1.0 --version
#
# BASE_IMAGE is any Debian bookworm image with python3 (>= 3.11) and its venv module: the
# official python:3.11-slim-bookworm (default), or plain Debian with python3-venv installed.
# Everything lives in a virtual environment made with `python3 -m venv`, built in the first stage
# and copied into the second; the build reaches PyPI, the image never needs the network.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build

# How pip reaches PyPI. PIP_CERT is the base's system CA bundle, so a TLS-inspecting proxy's CA
# added to the base (update-ca-certificates) is trusted; pass --build-arg PIP_INDEX_URL=… for a
# mirror.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# The converters and the validator (and its deno runtime), pinned; override with --build-arg.
ARG HEUDICONV_VERSION=1.5.1
ARG DCM2NIIX_VERSION=1.0.20260724
ARG BIDS_VALIDATOR_VERSION=3.0.2
ARG DENO_VERSION=2.9.8

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_CERT=${PIP_CERT}

# Only what the wheel is built from: never tests, data or ../shared.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bidsapp ./bidsapp
COPY heuristics ./heuristics

# Pruned after install: the big libraries' test suites, and google-api-python-client's ~600
# bundled discovery documents (110 MB) but Drive v3's, the only API bidsapp builds a client for.
RUN python3 -m venv /opt/bidsapp \
 && /opt/bidsapp/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
 && /opt/bidsapp/bin/pip install --no-cache-dir \
      /tmp/wheels/bidsapp-*.whl \
      "heudiconv==${HEUDICONV_VERSION}" \
      "dcm2niix==${DCM2NIIX_VERSION}" \
      "bids-validator-deno==${BIDS_VALIDATOR_VERSION}" \
      "deno==${DENO_VERSION}" \
 && /opt/bidsapp/bin/pip uninstall --yes pip \
 && find /opt/bidsapp -depth -type d -name tests -path '*/site-packages/*/tests' \
      \( -path '*/numpy/*' -o -path '*/scipy/*' -o -path '*/pandas/*' -o -path '*/networkx/*' \) \
      -exec rm -rf {} + \
 && find /opt/bidsapp -path '*/googleapiclient/discovery_cache/documents/*.json' \
      ! -name drive.v3.json -delete \
 && rm -rf /tmp/wheels /root/.cache

FROM ${BASE_IMAGE}

ARG BIDSAPP_VERSION=0.1.0
# The repository this image was built from: pass --build-arg SOURCE_URL=<its URL>.
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="bidsapp" \
      org.opencontainers.image.description="DICOM exams to a validated, de-identified BIDS dataset (BIDS-App)" \
      org.opencontainers.image.version="${BIDSAPP_VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# No telemetry look-ups (heudiconv, nipype): the container runs with --network none.
ENV PATH=/opt/bidsapp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NO_ET=1 \
    NIPYPE_NO_ET=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8

RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin bidsapp

COPY --from=build /opt/bidsapp /opt/bidsapp

USER 1000:1000
WORKDIR /home/bidsapp
ENTRYPOINT ["bidsapp"]
CMD ["--help"]
