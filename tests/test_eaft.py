"""EAFT (arXiv 2601.02151): NLL weighted by sg(H~)^alpha, H~ LLaMA-Factory's top-20 entropy / 3.0 (default) or the
whole-vocabulary entropy / ln V; each against a transcription of its formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from trainer_support import TOKENIZER, make_trainer

from psft.core.losses import LOSSES, eaft_loss, label_log_probs_from_logits, sft_loss


def _llamafactory_eaft(logits, labels, alpha):
    """LLaMA-Factory `_eaft_cross_entropy` (trainer_utils.py), transcribed: CE weighted by (top-20 entropy / 3)^alpha
    computed without gradient, mean over the valid tokens."""
    flat, target = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    ce = F.cross_entropy(flat, target, ignore_index=-100, reduction="none")
    valid = target != -100
    with torch.no_grad():
        top = torch.topk(flat[valid], k=20, dim=-1).values
        log_p = top - torch.logsumexp(top, dim=-1, keepdim=True)
        weight = (-(log_p.exp() * log_p).sum(-1) / 3.0) ** alpha
    return (ce[valid] * weight).mean()


def _full_entropy_eaft(logits, labels, alpha):
    flat, target = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    ce = F.cross_entropy(flat, target, ignore_index=-100, reduction="none")
    valid = target != -100
    with torch.no_grad():
        log_p = flat[valid].log_softmax(-1)
        weight = (-(log_p.exp() * log_p).sum(-1) / math.log(flat.shape[-1])) ** alpha
    return (ce[valid] * weight).mean()


def _random_batch(seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(3, 7, vocab, generator=g)).requires_grad_()
    labels = torch.randint(0, vocab, (3, 7), generator=g)
    labels[0, :2] = -100
    labels[2, 5:] = -100
    return logits, labels


def _ours(logits, labels, **kwargs):
    mask = labels != -100
    log_probs = label_log_probs_from_logits(logits, labels, mask, chunk_size=kwargs.pop("chunk_size", 1024))
    out = eaft_loss(log_probs, mask.float(), logits, **kwargs)
    return out.per_token.sum() / mask.sum(), out


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize(
    ("mode", "formula"), [("topk", _llamafactory_eaft), ("full", _full_entropy_eaft)], ids=["topk", "full"]
)
def test_eaft_loss_and_gradient_equal_the_formula(mode, formula, alpha):
    logits, labels = _random_batch()
    ours, _ = _ours(logits, labels, eaft_alpha=alpha, eaft_entropy=mode, chunk_size=4)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = formula(logits, labels, alpha)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-7)
    assert LOSSES["eaft"].hparams == ("eaft_alpha", "eaft_entropy") and LOSSES["eaft"].tensors == ("logits",)


def test_topk_and_full_entropy_weights_differ_in_size_and_order_on_peaked_distributions():
    vocab = 1000
    logits = torch.zeros(1, 2, vocab)
    logits[0, 0, :20] = 5.0  # 20 equal leaders holding 75% of the mass, a flat tail
    logits[0, 1, 0], logits[0, 1, 1:] = 8.0, 2.0  # one leader, a heavy flat tail of 999 tokens
    labels = torch.tensor([[3, 0]])
    weights = {
        mode: _ours(logits, labels, eaft_entropy=mode)[1].metrics["eaft_weight"][0]
        for mode in ("topk", "full")
    }
    # by hand: row 0's top 20 are uniform, so its top-20 entropy is ln 20 and the weight ln(20) / 3
    assert weights["topk"][0].item() == pytest.approx(math.log(20) / 3.0, rel=1e-5)
    p = torch.softmax(logits[0], -1)
    full = -(p * p.log()).sum(-1) / math.log(vocab)
    torch.testing.assert_close(weights["full"], full)
    # the top-20 weight ranks row 0 far above row 1; the whole-vocabulary weight ranks them the other way
    assert weights["topk"][0] > 5 * weights["topk"][1]
    assert weights["full"][1] > weights["full"][0]


def test_eaft_with_alpha_zero_is_sft():
    logits, labels = _random_batch(seed=1)
    mask = labels != -100
    log_probs = label_log_probs_from_logits(logits, labels, mask)
    eaft = eaft_loss(log_probs, mask.float(), logits, eaft_alpha=0.0).per_token.sum()
    a = torch.autograd.grad(eaft, logits, retain_graph=True)[0]
    b = torch.autograd.grad(sft_loss(log_probs, mask.float()).per_token.sum(), logits)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["topk", "full"])
def test_trainer_loss_is_the_formula_on_the_models_logits(tmp_path, mode):
    """The loss the trainer computes equals the formula on the model's plain logits, token-mean."""
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path, loss_type="eaft", eaft_alpha=1.0, eaft_entropy=mode, max_steps=1)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].double(), batch["labels"][:, 1:]
    formula = _llamafactory_eaft if mode == "topk" else _full_entropy_eaft
    if mode == "topk":
        assert logits.shape[-1] >= 20 and len(TOKENIZER) >= 20
    assert loss.item() == pytest.approx(formula(logits, labels, 1.0).item(), rel=1e-4)
