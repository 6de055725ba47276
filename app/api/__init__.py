"""HTTP routes. Thin: validation by the schemas, work by the services."""
