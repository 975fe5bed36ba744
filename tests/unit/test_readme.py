"""The README cannot drift: its definition, commands, settings and examples are checked."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from shoal.cli import main as cli_main
from shoal.core.definition import parse_definition
from shoal.infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_readme_definition_is_valid():
    (block,) = blocks("yaml")
    parse_definition(yaml.safe_load(block))


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path):
    parse_definition(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_sdk_examples_give_valid_definitions(path):
    from shoal.sdk import workflows_in_file

    found = workflows_in_file(path)
    assert found
    for wf in found:
        parse_definition(wf.to_dict())


def test_the_readme_sdk_block_runs_and_gives_a_valid_definition():
    (block,) = [b for b in blocks("python") if "shoal.sdk" in b]
    namespace: dict = {}
    exec(block, namespace)  # the README's own example
    assert namespace["definition"] == namespace["wf"].to_dict()
    parse_definition(namespace["definition"])


def test_every_shoal_command_in_the_readme_parses(monkeypatch):
    called = []
    lines = [ln.split("#")[0].strip() for b in blocks("bash") for ln in b.splitlines()]
    commands = [ln for ln in lines if "shoal " in ln]
    assert commands
    for line in commands:
        words = shlex.split(line.replace("…", "-id"))
        argv = words[[w.endswith("shoal") for w in words].index(True) + 1:]
        if ">" in argv:  # a redirection belongs to the shell
            argv = argv[:argv.index(">")]
        # Parse only: replace the handler so nothing is executed.
        monkeypatch.setattr("argparse.ArgumentParser.parse_args",
                            _recording_parse(called), raising=True)
        cli_main(argv)
    assert len(called) == len(commands)


def _recording_parse(called):
    import argparse

    original = argparse.ArgumentParser.__dict__["parse_known_args"]

    def parse_args(self, args=None, namespace=None):
        ns, extra = original(self, args, namespace)
        assert not extra, extra
        ns.fn = lambda _ns: called.append(ns)
        return ns

    return parse_args


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        assert f"SHOAL_{name.upper()}" in README, name


def test_the_state_tables_in_the_readme_are_generated_from_the_core():
    from shoal.core.docs import render

    assert render() in README, "run `make docs`"
