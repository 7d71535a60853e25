"""Thin Airflow adapters (hooks) over the spamgeo pipeline package in include/."""
