"""The VM target's renderer: backend descriptions as a Compose project, its TLS proxy and its boot."""
