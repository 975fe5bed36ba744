# One image for every Shoal service; the command picks the service.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY schemas ./schemas
COPY examples ./examples
RUN pip install --no-cache-dir -e . \
    && useradd --create-home shoal
USER shoal
ENV SHOAL_SCHEMAS_DIR=/app/schemas
ENTRYPOINT ["shoal"]
CMD ["service", "api"]
