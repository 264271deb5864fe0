# The gateway as a small image: a Python slim base, the package in a virtual environment,
# run as an unprivileged user. Build: docker build -t wattfare .
# deploy/compose.yaml runs two of these on one PostgreSQL database behind nginx.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY deploy/install.sh ./deploy/install.sh
RUN sh deploy/install.sh /opt/wattfare

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/wattfare --create-home wattfare
COPY --from=build /opt/wattfare /opt/wattfare
ENV PATH=/opt/wattfare/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WATTFARE_CONFIG=/etc/wattfare/wattfare.toml
USER wattfare
WORKDIR /var/lib/wattfare
EXPOSE 8787
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2)"]
ENTRYPOINT ["wattfare"]
CMD ["serve"]
