"""The spamgeo benchmark: the project's own steps against a naive pipeline on a large tenant's day.

Run it with `.venv/bin/python bench/run.py`; bench/README.md explains what it measures.
"""
