"""Training pipelines that write model bundles the backend registry loads."""
