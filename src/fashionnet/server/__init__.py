"""HTTP API and web page (FastAPI); install with `pip install 'fashionnet[serve]'`."""
