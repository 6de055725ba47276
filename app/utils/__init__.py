"""Cross-cutting helpers: logging, metrics, embedded servers."""
