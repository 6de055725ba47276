"""Worker node: claims tasks from Redis, runs them, reports to the scheduler API."""
