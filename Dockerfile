# The Kasmina image used by compose.yaml: the package and its console script `kasmina`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# only what the package needs (no .venv, no keys, no outputs)
COPY pyproject.toml README.md ./
COPY leyline ./leyline
COPY contracts ./contracts
COPY bus ./bus
COPY actors ./actors
COPY scenarios ./scenarios
COPY kasmina ./kasmina
COPY benchmarks ./benchmarks

# the "demo" extra adds matplotlib (the demo's plot); torch comes from the default index
RUN pip install --no-cache-dir ".[demo]"

# keys are never part of the image: compose mounts them as a secret (KASMINA_KEYS)
CMD ["kasmina", "--help"]
