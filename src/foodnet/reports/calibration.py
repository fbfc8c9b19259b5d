"""Temperature scaling (Guo et al. 2017): one scalar T that divides the logits so that softmax
confidences match accuracy, fitted on held-out logits; argmax, hence accuracy, never changes.

Written here rather than taken from a library: torchmetrics measures calibration but does not fit
it, netcal would add a numpy-only stack (and its own dependencies) for one scalar, and
scikit-learn's temperature method wraps an estimator, not a tensor of logits. The fit is a
one-parameter LBFGS on the negative log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al.'s)


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it changed on the logits it was fitted on."""

    temperature: float
    ece_raw: float  # expected calibration error of softmax(logits)
    ece: float      # ... of softmax(logits / temperature)
    nll_raw: float
    nll: float


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    from torch.nn import functional as F

    return float(F.cross_entropy(logits.double() / temperature, labels))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """torchmetrics' top-label ECE (L1, ECE_BINS bins)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(probs.float(), labels, num_classes=probs.shape[1],
                                              n_bins=ECE_BINS, norm="l1"))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T); 1.0 for no logits."""
    import torch
    from torch.nn import functional as F

    if logits.numel() == 0:
        return 1.0
    # Validation runs in inference mode; the fit needs autograd, on ordinary tensors.
    with torch.inference_mode(False), torch.enable_grad():
        logits = logits.detach().to("cpu", torch.float64).clone()
        labels = labels.detach().to("cpu").clone()
        # log T: positive by construction, and the loss is smoother in it than in T.
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
        temperature = float(log_t.detach().exp())
    # LBFGS starts at T = 1: keep that unless the fit found a lower NLL.
    return temperature if nll(logits, labels, temperature) < nll(logits, labels) else 1.0


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Fit the temperature on these logits and measure ECE and NLL before and after."""
    temperature = fit_temperature(logits, labels)
    logits = logits.detach().cpu().double()
    labels = labels.detach().cpu()
    return Calibration(
        temperature=temperature,
        ece_raw=expected_calibration_error(logits.softmax(dim=1), labels),
        ece=expected_calibration_error((logits / temperature).softmax(dim=1), labels),
        nll_raw=nll(logits, labels), nll=nll(logits, labels, temperature))
