"""4. The code that runs inside an instance process: the request server and its loop watchdog.

Nothing here imports node-side modules (pydantic, prometheus, Kafka): the template preloads it once.
"""
