"""Run the CLI from a checkout without installing: ``python cli.py search "a dog"``.

The installed console script ``retllm`` calls the same function; the code is in
``retllm_lite/cli/`` so that no top-level module named ``cli`` is installed.
"""

from retllm_lite.cli import main

if __name__ == "__main__":
    main()
