"""What should run: the manifest (models, loading with positions, edits), handler checks, cron, the registry,
the working-copy watcher, revisions, the deployment log and the code cache."""
