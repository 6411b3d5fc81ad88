"""HTTP source: the Starlette app (`app`), auth, body limits, error responses and OpenAPI."""
