"""`camelid serve|chat|eval --help` print the verb's usage and the config keys it reads (with their defaults and
the comment where each is declared) instead of loading a model called "--help"."""

import subprocess
import sys

import pytest

from camelid.cli import main


def test_serve_help_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "camelid", "serve", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("usage: camelid serve MODEL_OR_RUN")
    assert "serve.max_prompts_per_request=64" in proc.stdout and "engine.max_running=64" in proc.stdout
    assert "generations in flight per API key" in proc.stdout  # the comment where the key is declared


@pytest.mark.parametrize("argv, keys", [
    (["chat", "-h"], ["chat.temperature=0.7", "engine.block_size=16"]),
    (["eval", "--before", "--help"], ["eval.tasks=[]", "eval.limit=0"]),
    (["serve", "runs/x", "serve.port=9000", "--help"], ["serve.port=8000", "serve.host=127.0.0.1"]),
])
def test_verb_help_prints_usage_and_keys(argv, keys, capsys):
    main(argv)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: camelid {argv[0]} MODEL_OR_RUN") and all(k in out for k in keys)


def test_an_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "9000"])
    assert e.value.code == 1 and "unknown option '--port'" in capsys.readouterr().err
