# One image for every Shoal service; the command picks the service.
# The console's third-party script (dagre) comes from the npm registry, as `make` does.
FROM node:20-slim AS console
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY schemas ./schemas
COPY examples ./examples
COPY --from=console /console/node_modules/@dagrejs/dagre/dist/dagre.min.js \
     ./services/api/shoal_api/console/vendor/dagre.min.js
# Without the `embedded` extra: the image runs against Kafka and PostgreSQL it is given
# (SHOAL_KAFKA_BOOTSTRAP, SHOAL_DATABASE_URL), never an embedded broker or database.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home shoal
USER shoal
ENV SHOAL_SCHEMAS_DIR=/app/schemas
ENTRYPOINT ["shoal"]
CMD ["service", "api"]
