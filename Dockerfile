FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# The project itself (editable: one copy of the code, in /app), for the `dts` command line.
RUN pip install --no-cache-dir --no-deps -e .
# Runs as an unprivileged user; ./data (SQLite, Valkey of the quick start) is the only place it
# writes to.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dts \
    && mkdir -p /app/data && chown dts /app/data
USER dts
EXPOSE 8000 8501
# The API's liveness; the worker and dashboard services of docker-compose.yml set their own.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
CMD ["python", "-m", "app.main", "--host", "0.0.0.0", "--port", "8000"]
