# syntax=docker/dockerfile:1
# One image for every process: web (the default command), worker, beat, Flower and the release step.
# Dependencies come from the hashed runtime lock; the code is the wheel of this checkout, installed by
# root into site-packages, so the runtime user can read it and change nothing. No compiler is needed.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpujobs ./gpujobs
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && mkdir -p /data/storage

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GPUJOBS_LOG_FORMAT=json \
    GPUJOBS_DATA_DIR=/var/lib/gpujobs \
    GPUJOBS_STORAGE_DIR=/var/lib/gpujobs/storage
RUN useradd --system --user-group --no-create-home --home-dir /var/lib/gpujobs gpujobs
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
# The one writable place, for uploads and encoded videos. A named volume mounted here starts with
# this directory's owner, so the runtime user can write to it.
COPY --from=build --chown=gpujobs:gpujobs /data /var/lib/gpujobs
WORKDIR /var/lib/gpujobs
USER gpujobs
EXPOSE 5000 5555
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '5000')}/ready\", timeout=4)"]
CMD ["gunicorn", "-c", "python:gpujobs.gunicorn_conf"]
