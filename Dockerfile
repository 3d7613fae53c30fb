# One build, two images: `app` (APIs, workers, migrations) and `mail` (Dovecot, Postfix),
# both rendered from the same settings and deploy/ templates as `mailops stack up`.
FROM python:3.11-slim-bookworm AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MAILOPS_STATE_DIR=/var/lib/mailops
WORKDIR /app
COPY pyproject.toml requirements.lock README.md alembic.ini ./
RUN pip install --no-cache-dir -r requirements.lock
COPY shared ./shared
COPY services ./services
COPY cli ./cli
COPY migrations ./migrations
COPY deploy ./deploy
RUN pip install --no-cache-dir --no-deps -e .
CMD ["mailops", "--help"]

FROM app AS mail
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      dovecot-imapd dovecot-lmtpd dovecot-pgsql dovecot-sieve dovecot-managesieved \
      postfix postfix-pgsql \
 && rm -rf /var/lib/apt/lists/*
