"""The DPO stage: the preference task, preference data checks, DPO moving the policy the preferred way, the
metrics agreeing with TRL's, the chain's report, `psft dpo` and `psft compare --dpo`."""

import json

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from psft.cli import main
from psft.data.preference import load_preference_dataset
from psft.data.validate import write_jsonl
from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.stages.chain import format_report
from psft.stages.dpo import run_dpo, run_dpo_stage
from psft.stages.preference_eval import pair_log_probs, preference_metrics, tokenize_pair
from psft.tasks import PREFERENCE_TASKS, generate
from psft.tasks.preference import WRAPPERS, unwrap


def test_preference_pairs_prefer_the_right_answer_in_the_requested_shape():
    pairs = PREFERENCE_TASKS["pref"](300, seed=0, split="train")
    assert pairs == PREFERENCE_TASKS["pref"](300, seed=0, split="train")
    sft = generate("pref-sft", 300, seed=0, split="train")
    assert [p["prompt"][0]["content"] for p in pairs] == [
        e.prompt for e in sft
    ]  # SFT set = the chosen answers
    assert [p["chosen"][0]["content"] for p in pairs] == [e.completion for e in sft]
    test = {p["prompt"][0]["content"] for p in PREFERENCE_TASKS["pref"](100, split="test")}
    assert test.isdisjoint(e.prompt for e in sft)
    check = get_checker("exact")
    kinds = set()
    for p in pairs:
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert check(chosen, p["answer"]) and not check(rejected, p["answer"])
        example = next(e for e in sft if e.prompt == p["prompt"][0]["content"])
        answer, (opening, closing) = unwrap(example)
        assert chosen == opening + answer + closing and p["prompt"][0]["content"].endswith(".")
        in_shape = rejected.startswith(opening) and rejected.endswith(closing) and len(rejected) >= 2
        right = answer in (rejected, rejected[1:-1])
        assert {"wrong_answer": in_shape and not right, "wrong_format": right and not in_shape}.get(
            p["kind"], not right and not in_shape
        ), p
        kinds.add(p["kind"])
    assert kinds == {"wrong_answer", "wrong_format", "both"}
    assert {e.prompt.rsplit(" Answer ", 1)[1][:-1] for e in sft} == {a for a, _ in WRAPPERS.values()}


def test_preference_metrics_by_hand():
    chosen, rejected = torch.tensor([-1.0, -5.0, -2.0]), torch.tensor([-3.0, -4.0, -2.0])
    got = preference_metrics(chosen, rejected, beta=0.5)  # margins 2, -1, 0 (a tie counts as wrong)
    assert got == pytest.approx({"accuracy": 1 / 3, "reward_margin": 0.5 * (2 - 1 + 0) / 3})
    ref_c, ref_r = torch.tensor([-2.0, -5.0, -1.0]), torch.tensor([-2.0, -6.0, -3.0])  # ref margins 0, 1, 2
    got = preference_metrics(chosen, rejected, 0.5, ref_c, ref_r)  # 2, -2, -2
    assert got == pytest.approx({"accuracy": 1 / 3, "reward_margin": 0.5 * (2 - 2 - 2) / 3})


def pairs_rows(n=8, split="train", plain=False):
    rows = PREFERENCE_TASKS["pref"](n, seed=0, split=split)
    if plain:
        rows = [
            {k: r[k][0]["content"] if k in ("prompt", "chosen", "rejected") else r[k] for k in r}
            for r in rows
        ]
        for r in rows:
            r["prompt"] += "\n"
    return rows


def dpo_args(output_dir, **overrides):
    fields = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=64, max_steps=3,
        learning_rate=3e-3, beta=0.1, max_length=128, lr_scheduler_type="constant", logging_steps=1,
        save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False, use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    return fields | overrides


def _sequence_log_probs_by_hand(model, tokenizer, row, completion):
    """log pi(completion | prompt), summed, from full logits: an independent path."""
    if isinstance(row["prompt"], list):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(row["prompt"] + completion, tokenize=True)
    else:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + completion + tokenizer.eos_token)["input_ids"]
    prompt, full = (
        list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt),
        list(full["input_ids"] if hasattr(full, "keys") else full),
    )
    assert full[: len(prompt)] == prompt
    with torch.no_grad():
        logp = model(torch.tensor([full])).logits[0].log_softmax(-1)
    return sum(logp[i - 1, full[i]].item() for i in range(len(prompt), len(full)))


@pytest.mark.parametrize("plain", [False, True])
def test_pair_log_probs_equal_a_full_logits_computation(tiny_model_dir, plain):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = pairs_rows(5, plain=plain)
    chosen, rejected = pair_log_probs(model, tokenizer, rows, batch_size=2)
    for i, row in enumerate(rows):
        assert chosen[i].item() == pytest.approx(
            _sequence_log_probs_by_hand(model, tokenizer, row, row["chosen"]), abs=1e-4
        )
        assert rejected[i].item() == pytest.approx(
            _sequence_log_probs_by_hand(model, tokenizer, row, row["rejected"]), abs=1e-4
        )


@pytest.mark.parametrize("plain", [False, True])
def test_pairs_are_tokenised_as_trl_prepares_them(tmp_path, tiny_model_dir, plain):
    rows = pairs_rows(6, plain=plain)
    trainer = DPOTrainer(
        model=str(tiny_model_dir), args=DPOConfig(**dpo_args(tmp_path)), train_dataset=Dataset.from_list(rows)
    )
    for row, prepared in zip(rows, trainer.train_dataset, strict=True):
        ours = tokenize_pair(trainer.processing_class, row)
        assert ours == {k: prepared[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}


def test_a_dpo_run_raises_the_chosen_minus_rejected_margin_and_the_metrics_equal_trls(
    tmp_path, tiny_model_dir
):
    rows = pairs_rows(16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    c0, r0 = pair_log_probs(start, tokenizer, rows)
    args = DPOConfig(**dpo_args(tmp_path / "dpo", max_steps=4))
    trainer = run_dpo(str(tiny_model_dir), Dataset.from_list(rows), args)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    c1, r1 = pair_log_probs(policy, tokenizer, rows)
    assert (c1 - r1).mean() > (c0 - r0).mean() + 0.5  # DPO moved the policy the preferred way
    ours = preference_metrics(c1, r1, args.beta, c0, r0)  # against the start, DPO's reference
    assert ours["accuracy"] > 0.5 and ours["reward_margin"] > 0
    theirs = trainer.evaluate(
        Dataset.from_list(rows)
    )  # one batch of 16 pairs: TRL's means are over all pairs
    assert ours["reward_margin"] == pytest.approx(theirs["eval_rewards/margins"], abs=1e-4)
    assert ours["accuracy"] == pytest.approx(theirs["eval_rewards/accuracies"])
    saved = load_file(tmp_path / "dpo" / "model.safetensors")
    assert (tmp_path / "dpo" / "tokenizer.json").is_file()
    assert torch.equal(saved["lm_head.weight"], policy.lm_head.weight.detach())


def test_preference_data_from_files_plain_conversational_and_implicit_prompt(tmp_path):
    conv = load_preference_dataset(str(write_jsonl(pairs_rows(4), tmp_path / "c.jsonl")))
    assert len(conv) == 4 and conv[0]["chosen"][0]["role"] == "assistant"
    plain = load_preference_dataset(str(write_jsonl(pairs_rows(4, plain=True), tmp_path / "p.jsonl")))
    assert isinstance(plain[0]["prompt"], str)
    implicit = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in pairs_rows(3)
    ]
    Dataset.from_list(implicit).to_parquet(tmp_path / "i.parquet")
    loaded = load_preference_dataset(str(tmp_path / "i.parquet"))
    assert (
        loaded[0]["prompt"] == pairs_rows(3)[0]["prompt"]
        and loaded[0]["chosen"] == pairs_rows(3)[0]["chosen"]
    )
    assert len(load_preference_dataset("psft/pref", "test")) == 100


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": "Q", "chosen": "A"}, r"bad.jsonl:2: field 'rejected': missing"),
        ({"prompt": "Q", "chosen": "A", "rejected": ""}, r"bad.jsonl:2: field 'rejected': is empty"),
        (
            {"prompt": "Q", "chosen": "A", "rejected": "A"},
            r"bad.jsonl:2: field 'rejected': identical to chosen",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "human", "content": "A"}],
                "rejected": "B",
            },
            r"bad.jsonl:2: field 'chosen\[0\].role': unknown role 'human'",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": "A"}],
                "rejected": "B",
            },
            r"bad.jsonl:2: field 'rejected': must be a non-empty list",
        ),
        ({"chosen": "Q A", "rejected": "Q B"}, r"bad.jsonl:2: field 'prompt': missing"),
        (pairs_rows(1)[0], r"bad.jsonl:2: a conversational record in a plain-text file"),
    ],
)
def test_bad_preference_records_are_refused_naming_line_and_field(tmp_path, capsys, bad, message):
    path = write_jsonl([{"prompt": "Q", "chosen": "A", "rejected": "B"}, bad], tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match=message):
        load_preference_dataset(str(path))
    argv = [
        "dpo",
        "--dataset_name",
        str(path),
        "--model_name_or_path",
        "psft/tiny-base",
        "--output_dir",
        str(tmp_path),
    ]
    assert main(argv + ["--use_cpu", "true", "--bf16", "false"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bad.jsonl:2: " in err


def test_data_that_is_not_preference_data_is_refused(tmp_path):
    with pytest.raises(UserError, match="psft/arith: not a built-in preference dataset \\(an SFT task\\)"):
        load_preference_dataset("psft/arith")
    Dataset.from_list([{"prompt": "Q", "completion": "A"}]).to_parquet(tmp_path / "sft.parquet")
    with pytest.raises(UserError, match="no chosen or rejected column"):
        load_preference_dataset(str(tmp_path / "sft.parquet"))
    Dataset.from_list(
        [{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q", "chosen": "A", "rejected": " "}]
    ).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="bad.parquet: record 1: field 'rejected': is empty"):
        load_preference_dataset(str(tmp_path / "bad.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "Q", "chosen": "A", "rejected": "B"}\n{"prompt": \n')
    with pytest.raises(UserError, match="bad.jsonl:2: invalid JSON"):
        load_preference_dataset(str(tmp_path / "bad.jsonl"))


def test_chain_runs_dpo_from_each_checkpoint_and_reports_before_and_after(tmp_path, tiny_model_dir):
    pairs = write_jsonl(pairs_rows(16), tmp_path / "pairs.jsonl")
    args = DPOConfig(**dpo_args(tmp_path / "dpo", max_steps=2))
    report = run_dpo_stage(
        {"a": str(tiny_model_dir), "b": str(tiny_model_dir)}, args, str(pairs), eval_pairs="psft/pref",
        eval_pairs_limit=10, in_domain="psft/pref-sft", out_of_domain=["psft/upper", "psft/json"], eval_limit=2,
        max_new_tokens=4, base_model=str(tiny_model_dir),
    )  # fmt: skip
    with pytest.raises(UserError, match="set eval_pairs"):  # a file's own pairs are not held out
        run_dpo_stage({"a": str(tiny_model_dir)}, args, str(pairs))
    saved = json.loads((tmp_path / "dpo" / "dpo_report.json").read_text())
    assert saved["stage"] == "dpo" and saved["dpo"]["beta"] == 0.1 and saved["dpo"]["num_pairs"] == 16
    assert saved["methods"].keys() == {"a", "b"}
    for name in ("a", "b"):
        result = report["methods"][name]
        assert result["dpo_train"]["steps"] == 2 and result["dpo_train"]["reward_margin_last"] is not None
        before, after = result["before_dpo"], result["after_dpo"]
        for m in (before, after):
            assert m["in_domain"]["num_prompts"] == 2 and m["out_of_domain"]["num_prompts"] == 4
            assert set(m["out_of_domain"]["tasks"]) == {"upper", "json"} and m["in_domain"]["entropy"] > 0
            assert m["preference"]["num_pairs"] == 10 and m["preference"]["reference"] == str(tiny_model_dir)
        # the start is the base: no drift, every implicit reward 0 (ties count as wrong)
        assert before["drift"]["kl"] == pytest.approx(0.0, abs=1e-6) and after["drift"]["kl"] > 0
        assert before["preference"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
        assert before["preference"]["accuracy"] == 0.0 and "accuracy_vs_start" not in before["preference"]
        # the base is also the start here: the two references give the same numbers
        assert after["preference"]["reward_margin"] == pytest.approx(
            after["preference"]["reward_margin_vs_start"]
        )
        assert (tmp_path / "dpo" / name / "model.safetensors").is_file()
    assert report["methods"]["a"]["after_dpo"] == report["methods"]["b"]["after_dpo"]  # same run, same result
    table = format_report(report)
    assert "pref acc" in table and len(table.splitlines()) == 5 and "after_dpo" in table


def test_cli_runs_dpo_from_a_yaml(tmp_path, tiny_model_dir):
    config = dpo_args(tmp_path / "out", max_steps=1) | dict(
        model_name_or_path=str(tiny_model_dir), dataset_name="psft/pref"
    )
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(config))
    assert main(["dpo", "--config", str(tmp_path / "dpo.yaml"), "--beta", "0.2"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and (
        tmp_path / "out" / "tokenizer.json"
    ).is_file()


def test_example_config_parses():
    from psft.cli.dpo import load_dpo_config

    dpo_args_, config = load_dpo_config("examples/dpo-tiny.yaml", "unused")
    assert dpo_args_.dataset_name == "psft/pref" and dpo_args_.base_model == "psft/tiny-base"
    assert config.loss_type == ["sigmoid"] and not config.bf16 and config.use_cpu


def test_compare_dpo_chains_the_same_dpo_run_from_every_fine_tuned_method(tmp_path, tiny_model_dir):
    compare = dict(
        model=str(tiny_model_dir), train_data="psft/pref-sft", in_domain=["psft/pref-sft"], out_of_domain=["psft/upper"],
        eval_size=2, eval_every=2, max_new_tokens=4,
        methods=[{"name": "sft", "loss_type": "sft"}, {"name": "psft", "loss_type": "psft"}],
        training={"per_device_train_batch_size": 4, "max_steps": 2, "mini_batches_per_rollout": 2, "use_cpu": True},
    )  # fmt: skip
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(compare))
    dpo = dpo_args("ignored", max_steps=2) | dict(dataset_name="psft/pref", eval_pairs_limit=4)
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(dpo))
    argv = ["compare", "--config", str(tmp_path / "compare.yaml"), "--output_dir", str(tmp_path / "cmp")]
    assert main(argv + ["--dpo", str(tmp_path / "dpo.yaml")]) == 0
    report = json.loads((tmp_path / "cmp" / "dpo" / "dpo_report.json").read_text())
    assert report["methods"].keys() == {"sft", "psft"}
    for name in ("sft", "psft"):
        result = report["methods"][name]
        assert result["checkpoint"] == str(tmp_path / "cmp" / f"{name}-seed0") and result["dpo_train"]["steps"] == 2
        assert result["before_dpo"]["preference"]["reference"] == str(tiny_model_dir)
        assert result["before_dpo"]["drift"]["kl"] > 0  # fine-tuned: it moved from the base
        assert (tmp_path / "cmp" / "dpo" / name / "model.safetensors").is_file()


def test_plain_pairs_on_a_bpe_tokenizer_whose_tokens_merge_across_the_prompt_boundary(tmp_path):
    """A trained byte-level BPE (as real tokenizers are): prompt and completion merge into one token at the
    boundary, so the completion starts where the token lists diverge; ours must cut where TRL cuts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from psft.data.tiny import make_tiny_llama

    rows = pairs_rows(12, plain=True)
    for r in rows:
        r["prompt"] = r["prompt"].rstrip("\n")  # "...braces." + "{x}": "." and "{" may merge
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [r["prompt"] + r["chosen"] for r in rows] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    merged = [
        r
        for r in rows
        if tokenizer(r["prompt"])["input_ids"]
        != tokenizer(r["prompt"] + r["chosen"])["input_ids"][: len(tokenizer(r["prompt"])["input_ids"])]
    ]
    assert merged, "no pair merges across the boundary: the test would not test it"
    model_dir = tmp_path / "bpe-model"
    make_tiny_llama(
        tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    ).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    trainer = DPOTrainer(
        model=str(model_dir), args=DPOConfig(**dpo_args(tmp_path)), train_dataset=Dataset.from_list(rows)
    )
    for row, prepared in zip(rows, trainer.train_dataset, strict=True):
        assert tokenize_pair(trainer.processing_class, row) == {
            k: prepared[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")
        }


def test_cli_trains_a_lora_adapter_with_dpo(tmp_path, tiny_model_dir):
    """With PEFT the reference is the model with its adapter disabled (TRL): one step, an adapter saved."""
    argv = [
        "dpo",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dataset_name",
        "psft/pref",
        "--use_peft",
        "true",
    ]
    argv += ["--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "1"]
    argv += ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    assert main(argv + ["--gradient_checkpointing", "false", "--per_device_train_batch_size", "4"]) == 0
    assert (tmp_path / "adapter_model.safetensors").is_file() and not (
        tmp_path / "model.safetensors"
    ).exists()


def test_probe_without_a_base_is_reference_free_and_after_dpo_also_measures_against_the_start(tiny_model_dir):
    from psft.stages.preference_eval import PreferenceProbe

    rows = pairs_rows(6)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    probe = PreferenceProbe(rows, DPOConfig(output_dir="unused", beta=0.5, use_cpu=True, bf16=False))
    before = probe(model, tokenizer, "a", "before")["preference"]
    chosen, rejected = pair_log_probs(model, tokenizer, rows)
    assert before["reference"] is None and before["num_pairs"] == 6
    assert before["reward_margin"] == pytest.approx(0.5 * before["logp_margin"])
    assert before["accuracy"] == pytest.approx(float((chosen > rejected).double().mean()))
    after = probe(model, tokenizer, "a", "after")["preference"]  # same model: nothing moved against the start
    assert after["accuracy_vs_start"] == 0.0 and after["reward_margin_vs_start"] == pytest.approx(
        0.0, abs=1e-6
    )
