"""The README's promises: exactly two set-up commands (the test one is what CI runs), and
the drop-in example computes what the torch.distributions code it replaces computes."""
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return [block.strip() for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = code_blocks(section("Set up on a fresh machine"), "bash")
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    main_job, tests = commands
    assert "python -m fastvae.demo" in main_job
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    for pin in ("torch==2.13.0", "triton==3.6.0"):
        assert pin in main_job and pin in tests and pin in ci
    assert re.search(r"^python -m pytest$", ci, flags=re.M)
    assert '-e ".[dev]"' in tests and '-e ".[dev]"' in ci


def test_drop_in_example_matches_torch_distributions():
    before, after = code_blocks(section("Drop-in example"), "python")[:2]
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 8), torch.randn(16, 8)
    decoded = {}
    scope = {"torch": torch, "mu": mu, "logvar": logvar, "x": torch.rand(16, 8),
             "decoder": lambda z: decoded.setdefault("z", z),
             "recon_nll": lambda out, x: torch.zeros(out.shape[0])}
    exec(before, scope)
    kl_before, z_before = scope["kl"], scope["z"]
    exec(after, scope)
    torch.testing.assert_close(scope["kl"], kl_before, rtol=1e-5, atol=1e-5)
    assert scope["z"].shape == z_before.shape and decoded["z"] is scope["z"]
    assert scope["loss"].shape == ()
