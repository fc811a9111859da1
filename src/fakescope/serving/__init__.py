"""`fakescope serve`: a web page and a versioned REST API over one loaded run (FastAPI on
uvicorn). ``app.create_app`` builds the application; ``batcher.MicroBatcher`` scores the faces
of concurrent requests together."""
