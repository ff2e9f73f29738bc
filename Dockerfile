FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENV GPUJOBS_LOG_FORMAT=json
RUN apt-get update && apt-get install -y --no-install-recommends gcc make && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home gpujobs && chown -R gpujobs /app
USER gpujobs
EXPOSE 5000 5555
CMD ["gunicorn", "--bind", "0.0.0.0:5000", "--workers", "4", "gpujobs.wsgi:app"]
