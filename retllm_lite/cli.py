"""Command-line interface (placeholder replaced below)."""
import click


@click.group()
def main() -> None:
    """retllm: offline multimodal search."""
