"""Small things users expect: the config file's defaults, shell completion, and a search
without an index saying how to make one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from retllm_lite.cli import cli
from retllm_lite.config import config_path


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def write_config(text: str):
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_file_sets_index_and_k_and_options_win(serve_corpus, tmp_path):
    _photos, index_dir = serve_corpus
    path = write_config(f'index = "{index_dir}"\nk = 3\n')
    assert path == tmp_path / "home" / "config" / "retllm-lite" / "config.toml"  # XDG_CONFIG_HOME
    res = run("search", "a photo", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 3
    res = run("search", "a photo", "--json", "-k", "5")
    assert len(json.loads(res.stdout)) == 5  # the command line wins
    res = run("search", "a photo", "--json", env={"RETLLM_INDEX": str(tmp_path / "none")})
    assert res.exit_code == 1 and "no index at" in res.output  # the environment wins over the file
    res = run("info", "--json")
    assert res.exit_code == 0 and str(index_dir) in res.output


def test_config_file_errors_name_the_file():
    for text, what in (
        ("k = 0\n", "k = 0 is not a positive whole number"),
        ('k = "ten"\n', "is not a positive whole number"),
        ("rerank = 1\n", "rerank = 1 is not a bool"),
        ("colour = 'red'\n", "unknown setting 'colour'"),
        ("k = \n", "not valid TOML"),
    ):
        path = write_config(text)
        res = run("search", "x")
        assert res.exit_code == 1, text
        assert str(path) in res.output and what in res.output, (text, res.output)
        assert len(res.output.strip().splitlines()) == 1


def test_config_rerank_default_reaches_retllm_serve():
    from retllm_lite.config import default_map, load_config

    write_config('rerank = true\nvlm_model = "/models/vlm"\nk = 12\n')
    mapping = default_map(cli.commands, load_config())
    assert mapping["serve"] == {"rerank": True, "vlm_model": "/models/vlm", "k": 12}
    assert mapping["search"] == {"rerank": True, "vlm_model": "/models/vlm", "k": 12}
    assert "index" not in mapping.get("models", {})


def test_search_without_an_index_says_how_to_make_one(tmp_path):
    res = run("search", "a dog")
    assert res.exit_code == 1
    assert "no index at" in res.output and "retllm index ~/Pictures)" in res.output
    res = run("search", "a dog", "--index", tmp_path / "elsewhere")
    assert f"retllm index ~/Pictures --index {tmp_path / 'elsewhere'}" in res.output
    res = run("serve", "--index", tmp_path / "elsewhere", "--port", "0")
    assert res.exit_code == 1 and "retllm index ~/Pictures --index" in res.output


def test_bash_completion_script_completes_commands_and_options():
    env = {**os.environ, "_RETLLM_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-m", "retllm_lite"], env=env, capture_output=True, text=True)
    assert (
        "_retllm_completion" in script.stdout and "complete -o nosort -F _retllm_completion" in script.stdout
    )
    env = {**os.environ, "_RETLLM_COMPLETE": "bash_complete", "COMP_WORDS": "retllm se", "COMP_CWORD": "1"}
    words = subprocess.run([sys.executable, "-m", "retllm_lite"], env=env, capture_output=True, text=True)
    assert "plain,search" in words.stdout and "plain,serve" in words.stdout
