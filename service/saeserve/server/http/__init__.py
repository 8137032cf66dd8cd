"""The HTTP transport: OpenAI-compatible routes, the JSON API, and their shared error map."""
