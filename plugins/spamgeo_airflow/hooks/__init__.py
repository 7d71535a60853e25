"""Airflow hooks that turn connections into spamgeo clients."""
