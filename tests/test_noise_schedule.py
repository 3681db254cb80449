"""The noise schedules of the diffusion decoder: γ strictly increasing (SNR strictly
decreasing) with the given endpoints, γ' the derivative of γ (against finite
differences), differentiable in the learned schedule's parameters, and clear errors."""

import pytest
import torch

from fastvae.models.noise_schedule import FixedLinearSchedule, LearnedSchedule, make_schedule


def schedules():
    torch.manual_seed(0)
    learned = LearnedSchedule(-13.3, 5.0, hidden=64)
    # Move the learned schedule away from its initialisation, as training would.
    with torch.no_grad():
        for parameter in learned.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return [FixedLinearSchedule(-13.3, 5.0), LearnedSchedule(-13.3, 5.0, hidden=64), learned]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_snr_is_strictly_decreasing_with_the_endpoints(index):
    schedule = schedules()[index]
    t = torch.linspace(0, 1, 2001)
    gamma, derivative = schedule.gamma_and_derivative(t)
    snr = torch.exp(-gamma.double())
    assert (snr[1:] < snr[:-1]).all()
    assert (derivative > 0).all()
    assert gamma[0].item() == pytest.approx(schedule.gamma_0.item(), abs=1e-4)
    assert gamma[-1].item() == pytest.approx(schedule.gamma_1.item(), abs=1e-4)
    if index < 2:  # at initialisation, both are VDM's γ_min, γ_max
        assert (gamma[0].item(), gamma[-1].item()) == pytest.approx((-13.3, 5.0), abs=1e-4)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_derivative_is_that_of_gamma(index):
    schedule = schedules()[index].double()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    _, derivative = schedule.gamma_and_derivative(t)
    step = 1e-4
    # float32 inside the schedule: central differences of step 1e-4 are good to ~1e-2.
    finite = (schedule(t + step).double() - schedule(t - step).double()) / (2 * step)
    assert torch.allclose(derivative.double(), finite, rtol=2e-2, atol=2e-2)


def test_the_learned_schedule_gets_gradients_through_gamma_and_its_derivative():
    schedule = LearnedSchedule(hidden=16)
    t = torch.rand(32)
    gamma, derivative = schedule.gamma_and_derivative(t)
    (gamma.sum() + derivative.sum()).backward()
    for name, parameter in schedule.named_parameters():
        if name != "l3_bias":  # γ̃'s constant cancels in the rescaling to the endpoints
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # The endpoints move γ(0) and γ(1) one for one.
    schedule.zero_grad()
    schedule(torch.tensor([0.0])).sum().backward()
    assert schedule.gamma_start.grad.item() == pytest.approx(1.0, abs=1e-5)
    assert schedule.span_raw.grad.abs().item() < 1e-5


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="diffusion_schedule must be one of"):
        make_schedule("fastvae.models.MLPVAE", "cosine")
    with pytest.raises(ValueError, match="gamma_min must be < gamma_max"):
        FixedLinearSchedule(5.0, -13.3)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        LearnedSchedule(hidden=0)
