"""Floor 2 (bottom, above the compiled ops): files, caches, bundled data, model resolution, GGUF files and
report headers. Nothing here loads a model or imports a backend."""
