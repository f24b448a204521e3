"""``python -m retllm_lite ...`` runs the CLI."""

from retllm_lite.cli import main

main(prog_name="retllm")
