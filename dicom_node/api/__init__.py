"""The REST API (FastAPI): one module per resource, assembled by app.create_app."""
