"""Where large PSFT ratios come from: per-token probabilities of demonstrations under two models.

    psft train --config examples/psft-tiny.yaml --max_steps 7 --output_dir runs/ratio-probe
    python scripts/explain_ratios.py --old psft/tiny-base --new runs/ratio-probe --data psft/arith

Prints, over the answer tokens of the first `--examples` training records, the distribution of the ratio
new/old (what `ratio/mean`, `ratio/max` and `approx_kl` summarise in the training log), the old model's
token probabilities, and the tokens with the largest ratios. Step 7 of the first rollout is the last one
that shares the base model as its old policy, so `--old psft/tiny-base` is exactly that rollout's old policy.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from psft.data.models import resolve_model_name
from psft.data.sft import load_sft_dataset


def answer_log_probs(model, tokenizer, messages) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs of the assistant tokens, their ids) for one conversation."""
    enc = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]])
    mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    return logp[mask], ids[0, 1:][mask]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", default="psft/tiny-base")
    p.add_argument("--new", required=True)
    p.add_argument("--data", default="psft/arith")
    p.add_argument("--examples", type=int, default=64)
    args = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(args.old))
    old = AutoModelForCausalLM.from_pretrained(resolve_model_name(args.old)).eval()
    new = AutoModelForCausalLM.from_pretrained(resolve_model_name(args.new)).eval()
    data = load_sft_dataset(args.data)
    old_lp, new_lp, tokens = [], [], []
    for row in data.select(range(min(args.examples, len(data)))):
        lo, ids = answer_log_probs(old, tokenizer, row["messages"])
        old_lp.append(lo)
        new_lp.append(answer_log_probs(new, tokenizer, row["messages"])[0])
        tokens += tokenizer.convert_ids_to_tokens(ids.tolist())
    lo, ln = torch.cat(old_lp), torch.cat(new_lp)
    ratio = (ln - lo).exp()
    top = ratio.topk(8).indices.tolist()
    print(
        json.dumps(
            {
                "answer_tokens": len(ratio),
                "ratio": {
                    "mean": ratio.mean().item(),
                    "median": ratio.median().item(),
                    "max": ratio.max().item(),
                },
                "share_clipped_at_1.28": (ratio > 1.28).float().mean().item(),
                "old_prob_median": lo.exp().median().item(),
                "share_old_prob_below_1e-4": (lo.exp() < 1e-4).float().mean().item(),
                "old_nll": -lo.mean().item(),
                "largest": [
                    {
                        "token": tokens[i],
                        "ratio": ratio[i].item(),
                        "old_p": lo[i].exp().item(),
                        "new_p": ln[i].exp().item(),
                    }
                    for i in top
                ],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
