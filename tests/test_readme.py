"""The README's promises: exactly two set-up commands (the test one is what CI runs, the
other ends with the main command), the main command is one `fastvae train` line the
command accepts, its picture is there, the Burda et al. command describes their model,
and the drop-in example computes what the torch.distributions code it replaces computes."""
import re
import shlex
from pathlib import Path

import torch

from fastvae import cli
from fastvae.cli.options import given_flags
from fastvae.cli.presets import read_preset
from fastvae.cli.train import resolve_settings

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
    assert main_job.endswith(" && " + main_command())
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    for pin in ("torch==2.13.0", "triton==3.6.0"):
        assert pin in main_job and pin in tests and pin in ci
    assert re.search(r"^python -m pytest$", ci, flags=re.M)
    assert '-e ".[dev]"' in tests and '-e ".[dev]"' in ci


def main_command() -> str:
    commands = code_blocks(section("The main job"), "bash")
    assert len(commands) == 1 and "\n" not in commands[0], commands
    return commands[0]


def parsed_settings(command: str) -> dict:
    argv = shlex.split(command)
    assert argv[:2] == ["fastvae", "train"], command
    args = cli.build_parser().parse_args(argv[1:])
    return resolve_settings(given_flags(args), read_preset(args.preset, "train") if args.preset else {})


def test_main_command_is_one_fastvae_train_line_on_the_embedded_data():
    settings = parsed_settings(main_command())
    assert settings["data"] == "sprites" and settings["out"] == "runs/sprites"
    text = section("The main job")
    assert f"{settings['steps']} steps of {settings['batch_size']} images" in text.replace("\n", " ")
    picture = re.search(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", text)
    assert picture, "the main job's section shows no picture from docs/"
    assert (ROOT / picture.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_burda_command_is_their_model():
    text = section("Reproducing Burda et al. on statically binarized MNIST")
    commands = code_blocks(text, "bash")
    assert commands and all(command.startswith("fastvae train") for command in commands)
    for command in commands:
        settings = parsed_settings(command)
        assert (settings["data"], settings["model"], settings["hidden_sizes"], settings["latent_dim"],
                settings["activation"], settings["likelihood"]) == ("binarized_mnist", "mlp", [200, 200], 50, "tanh",
                                                                    "bernoulli")
        assert settings["iwae_samples"] == 5000
    assert "89.9" in text and "89.78" in text and "awaits a GPU run" in text


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


def test_deep_comparison_commands_train_both_models_for_the_same_time():
    """The deep-versus-MLP comparison: two `fastvae train` lines (each on one thread), the
    deep preset and the MLP VAE, on the same data with the same time limit and the same
    IWAE estimate, and the section names that time."""
    text = section("A deep hierarchical VAE")
    commands = [c for c in code_blocks(text, "bash") if "fastvae train" in c]
    assert len(commands) == 2, commands
    settings = {}
    for command in commands:
        assert command.startswith("OMP_NUM_THREADS=1 fastvae train"), command
        parsed = parsed_settings(command.removeprefix("OMP_NUM_THREADS=1 "))
        settings[parsed["model"]] = parsed
    deep, mlp = settings["deep"], settings["mlp"]
    assert deep["resolutions"] == [28, 14, 7, 1] and deep["data"] == mlp["data"] == "binarized_mnist"
    for key in ("time_limit", "iwae_samples", "iwae_points", "eval_split"):
        assert deep[key] == mlp[key], key
    assert f"{deep['time_limit']:g} minutes" in text


def test_gradient_variance_commands_measure_the_runs_they_train():
    """The gradient-variance section: each `fastvae gradvar` line measures the run folder
    a `fastvae train` line before it leaves, with flags the command takes, and the first
    run is the main job."""
    text = section("Gradient variance: reparameterization against the score function")
    commands = [line for block in code_blocks(text, "bash") for line in block.splitlines()]
    assert [c.split()[1] for c in commands] == ["train", "gradvar", "train", "gradvar"]
    assert commands[0] == main_command()
    parser = cli.build_parser()
    for train, gradvar in (commands[:2], commands[2:]):
        out = parsed_settings(train)["out"]
        args = parser.parse_args(shlex.split(gradvar)[1:])
        assert args.checkpoint == out and args.num_estimates >= 1000, gradvar
        assert f"--batch-size {args.batch_size}" in gradvar
    mnist = parsed_settings(commands[2])
    assert (mnist["hidden_sizes"], mnist["latent_dim"], mnist["activation"]) == ([200, 200], 50, "tanh")


def test_delta_vae_command_is_the_burda_model_with_the_autoregressive_decoder():
    """The δ-VAE comparison's command: Burda et al.'s model with the autoregressive
    decoder on the README's data folder, and the committed rates the table compares."""
    text = section("The δ-VAE: a committed rate")
    commands = [c for c in code_blocks(text, "bash") if "fastvae train" in c]
    assert len(commands) == 1, commands
    assert commands[0].startswith("OMP_NUM_THREADS=1 fastvae train")
    settings = parsed_settings(commands[0].removeprefix("OMP_NUM_THREADS=1 "))
    assert (settings["data"], settings["data_root"], settings["model"], settings["hidden_sizes"],
            settings["latent_dim"], settings["activation"], settings["decoder"]) == (
        "binarized_mnist", "../shared/data", "mlp", [200, 200], 50, "tanh", "autoregressive")
    assert settings["committed_rate"] == 0 and settings["steps"] == 3000 and settings["batch_size"] == 100
    for rate in ("0.1", "0.5"):
        assert f"`--committed-rate {rate}`" in text
        assert re.search(rf"^\| autoregressive: δ = {rate} \|", text, flags=re.M), rate
    assert re.search(r"^\| autoregressive: plain VAE \(δ = 0\) \|", text, flags=re.M)
    assert "`--decoder mlp`" in text


def test_autoregressive_prior_commands_differ_only_in_the_prior():
    """The prior comparison: `fastvae train` lines on binarized MNIST with Burda et al.'s
    model, the same steps, batch, learning rate and IWAE estimate, differing only in the
    prior's settings, every prior of the table among them."""
    text = section("An autoregressive prior")
    commands = [c for c in code_blocks(text, "bash") if "fastvae train" in c]
    settings = [parsed_settings(command.removeprefix("OMP_NUM_THREADS=1 ")) for command in commands]
    assert {s["prior"] for s in settings} == {"standard_normal", "vamp", "autoregressive"}
    prior_keys = {"prior", "prior_components", "prior_hidden_sizes", "prior_lr_scale", "out"}
    common = [{k: v for k, v in s.items() if k not in prior_keys} for s in settings]
    assert all(c == common[0] for c in common), common
    first = settings[0]
    assert (first["data"], first["model"], first["hidden_sizes"], first["latent_dim"]) == ("binarized_mnist", "mlp",
                                                                                           [200, 200], 50)
    assert f"{first['steps']:,} steps of {first['batch_size']}" in text.replace("\n", " ")


def test_latent_comparison_command_is_the_burda_model_with_each_latent():
    """The latent families' comparison: one command, Burda et al.'s model with a
    non-Gaussian latent, and a table row for every latent the command line offers."""
    text = section("Latents beyond the Gaussian")
    commands = [c for c in code_blocks(text, "bash") if "fastvae train" in c]
    assert len(commands) == 1, commands
    settings = parsed_settings(commands[0].removeprefix("OMP_NUM_THREADS=1 "))
    assert (settings["data"], settings["data_root"], settings["model"], settings["hidden_sizes"],
            settings["latent_dim"], settings["latent"], settings["epochs"]) == (
        "binarized_mnist", "../shared/data", "mlp", [200, 200], 50, "laplace", 10)
    for latent in ("gaussian", "laplace", "logistic", "cauchy", "truncated_normal"):
        assert re.search(rf"^\| {latent}( \(−2, 2\))? \|", text, flags=re.M), latent


def test_diffusion_decoder_comparison_trains_both_decoders_alike_and_evaluates_both():
    """The diffusion-decoder comparison: two `fastvae train` lines that differ only in the
    decoder (Burda et al.'s encoder, the same data, time limit and evaluation flags), and
    a `fastvae eval` of each run folder with the same K and points, the diffusion one
    stating its t-samples."""
    text = section("A diffusion decoder")
    lines = [line for block in code_blocks(text, "bash") for line in block.splitlines()]
    trains = [line.removeprefix("OMP_NUM_THREADS=1 ") for line in lines if "fastvae train" in line]
    evals = [line for line in lines if line.startswith("fastvae eval")]
    assert len(trains) == 2 and len(evals) == 2, lines
    bernoulli, diffusion = (parsed_settings(line) for line in trains)
    assert (bernoulli["likelihood"], diffusion["likelihood"]) == ("bernoulli", "diffusion")
    assert (bernoulli["data"], bernoulli["model"], bernoulli["hidden_sizes"], bernoulli["latent_dim"],
            bernoulli["activation"]) == ("binarized_mnist", "mlp", [200, 200], 50, "tanh")
    for key in ("data", "data_root", "model", "hidden_sizes", "latent_dim", "activation", "time_limit",
                "iwae_samples", "iwae_points", "epochs", "batch_size"):
        assert bernoulli[key] == diffusion[key], key
    assert f"{bernoulli['time_limit']:g} minutes" in text
    parser = cli.build_parser()
    parsed = [parser.parse_args(shlex.split(line)[1:]) for line in evals]
    assert [args.checkpoint for args in parsed] == [bernoulli["out"], diffusion["out"]]
    assert parsed[0].iwae_samples == parsed[1].iwae_samples and parsed[0].num_points == parsed[1].num_points
    assert parsed[1].diffusion_t_samples is not None
    assert f"S = {parsed[1].diffusion_t_samples}" in text and f"K = {parsed[1].iwae_samples}" in text
    for picture in re.findall(r"\]\((docs/[^)]+\.png)\)", text):
        assert (ROOT / picture).is_file(), picture
