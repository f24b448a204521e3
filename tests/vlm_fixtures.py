"""Session fixtures: tiny random Gemma3 VLM converted to GGUF."""
