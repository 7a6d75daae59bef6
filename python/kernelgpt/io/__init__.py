"""Reading and fetching files: model formats (GGUF, safetensors) and pip-delivered data."""
