"""The README is the contract with a new user: short, and its commands real."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_the_first_block_installs_runs_the_demo_and_the_tests():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert any("pip install" in line for line in lines)
    assert "fashionnet demo" in lines
    assert "python -m pytest -q" in lines
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()  # CI runs the same


def test_every_command_the_readme_names_exists():
    from fashionnet.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README, re.S)
                     + re.findall(r"`([^`\n]+)`", README))
    named = set(re.findall(r"(?:^|[\s&;(])fashionnet ([a-z][a-z-]+)", code, re.M))
    assert {"train", "classify", "serve", "tune", "runs", "card"} <= named
    assert named <= set(commands), named - set(commands)


def test_the_links_of_the_readme_lead_to_files():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target
