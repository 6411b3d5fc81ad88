"""Sources of work: HTTP (`http`), Kafka events (`kafka`) and cron schedules (`schedule`).

Each source turns its input into calls on the invoker and never talks to instances directly.
"""
