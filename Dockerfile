# The Airflow image for spamgeo deployments: the official Airflow 3.3.2 image plus the pinned
# requirements. The DAGs, plugins and include/ package are mounted by docker-compose.yaml.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/spamgeo/
RUN pip install --no-cache-dir -r /opt/spamgeo/requirements.txt -c /opt/spamgeo/constraints.txt
ENV PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins
