# Sourced by the other scripts: an Airflow home inside the repository, on SQLite, that
# loads this project's DAGs and plugins and nothing else.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$repo/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$repo/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:8080/execution/}"
export PYTHONPATH="$repo/include:$repo/plugins${PYTHONPATH:+:$PYTHONPATH}"
export NO_COLOR=1
mkdir -p "$AIRFLOW_HOME"
