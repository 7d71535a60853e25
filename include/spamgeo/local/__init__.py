"""Local stand-ins for the services around the pipeline, for development and tests only."""
