"""Session fixtures: tiny random-weight open_clip models exported through retllm quantize."""
