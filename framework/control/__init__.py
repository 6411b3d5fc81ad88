"""What should run: the manifest (models, loading with positions, edits), handler checks, cron, the registry,
the working-copy watcher and the code snapshots."""
