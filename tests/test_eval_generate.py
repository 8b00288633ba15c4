"""Generation evaluation on tiny models with known outputs: greedy answers, left padding, avg@n/pass@n."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from eval_support import ANSWERS, chat, train_memorizer

from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.eval.generate import encode_prompt, evaluate_generation, generate, pass_at_k, score
from psft.eval.records import load_records


@pytest.fixture(scope="module")
def memorizer():
    torch.set_num_threads(1)
    return train_memorizer()


@pytest.fixture(scope="module")
def random_model():
    tok = make_char_tokenizer()
    model = make_tiny_llama(tok, seed=3).eval()
    with torch.no_grad():  # larger weights: outputs that depend on the prompt, not one repeated character
        for p in model.parameters():
            p.mul_(3)
    return model, tok


def test_greedy_outputs_are_the_memorised_answers_and_stop_at_end_of_turn(memorizer):
    model, tok = memorizer
    outputs = generate(model, tok, [chat(p) for p in ANSWERS], max_new_tokens=30)
    assert [o[0] for o in outputs] == list(ANSWERS.values())


def test_model_generation_config_extras_do_not_change_the_decoding(memorizer, monkeypatch):
    model, tok = memorizer
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 50.0)
    monkeypatch.setattr(model.generation_config, "top_k", 1)
    assert [o[0] for o in generate(model, tok, [chat("hello")], max_new_tokens=30)] == ["olleh"]
    penalised = model.generate(input_ids=torch.tensor([encode_prompt(tok, chat("hello"))]), max_new_tokens=6)
    assert "olleh" not in tok.decode(penalised[0])  # the penalty alone would break the answer


def test_accuracy_per_task_with_standard_error_and_jsonl_samples(memorizer, tmp_path):
    model, tok = memorizer
    rows = [
        {"prompt": chat("abc"), "completion": [{"role": "assistant", "content": "cba"}], "task": "rev"},
        {"messages": chat("hello") + [{"role": "assistant", "content": "olleh"}], "task": "rev"},
        {"prompt": chat("xy"), "answer": "xy", "task": "rev"},  # the model says "yx": wrong
        {"prompt": chat("1/2?"), "answer": "1/2", "task": "math", "checker": "math"},
    ]
    result = evaluate_generation(
        model, tok, rows, batch_size=3, max_new_tokens=30, samples_path=tmp_path / "s.jsonl"
    )
    rev, maths = result.tasks["rev"], result.tasks["math"]
    assert (rev.num_prompts, rev.avg, rev.pass_) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert rev.avg_stderr == pytest.approx(1 / 3)  # sd of (1, 1, 0) is sqrt(1/3), over sqrt(3)
    assert maths.avg == 1.0 and math.isnan(maths.avg_stderr)
    assert result.overall.avg == 0.75
    assert result.metrics()["gen/rev/avg@1"] == pytest.approx(2 / 3)
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(s["output"], s["correct"]) for s in lines] == [
        ("cba", True),
        ("olleh", True),
        ("yx", False),
        ("\\boxed{0.5}", True),
    ]
    assert lines[3]["checker"] == "math" and get_checker("math")(f"${lines[3]['extracted']}$", "0.5")
    assert lines[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_left_padded_batch_equals_one_at_a_time(random_model):
    model, tok = random_model
    prompts = ["a", "hello there", "xyz 123 and more", chat("hi"), "q"]
    batched = generate(model, tok, prompts, max_new_tokens=12)
    single = [generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert len({o[0] for o in batched}) == len(prompts)  # outputs depend on the prompt
    assert all(len(o[0]) <= 12 for o in batched)


def test_right_padding_would_break_the_memorised_answers(memorizer):
    """The check above can fail: padding on the wrong side changes the answers of the shorter prompts."""
    model, tok = memorizer
    ids = [encode_prompt(tok, chat(p)) for p in ANSWERS]
    width = max(map(len, ids))
    right = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    mask = (torch.arange(width)[None] < torch.tensor([len(x) for x in ids])[:, None]).long()
    out = model.generate(input_ids=right, attention_mask=mask, max_new_tokens=12, do_sample=False)
    wrong = [tok.decode(o[width:], skip_special_tokens=True) for o in out]
    assert sum(w != a for w, a in zip(wrong, ANSWERS.values(), strict=True)) >= 2
    assert [o[0] for o in generate(model, tok, [chat(p) for p in ANSWERS], max_new_tokens=12)] == list(
        ANSWERS.values()
    )


def test_avg_and_pass_at_n_math():
    s = score([[True, False, False, False], [False] * 4, [True] * 4])
    assert s.avg == pytest.approx((0.25 + 0 + 1) / 3) and s.pass_ == pytest.approx(2 / 3)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 1, 1) == 0.25 and pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_sampling_n_per_prompt_is_seeded_and_leaves_the_global_rng_alone(random_model, tmp_path):
    model, tok = random_model
    rows = [
        {"prompt": p, "answer": a, "task": t}
        for p, a, t in [("ab", "c", "x"), ("cd", "e", "x"), ("f", "g", "y")]
    ]
    kwargs = dict(n=4, temperature=1.0, top_p=0.95, max_new_tokens=1, batch_size=8, checker="regex")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = evaluate_generation(model, tok, rows, seed=5, samples_path=tmp_path / "a.jsonl", **kwargs)
    assert torch.equal(torch.rand(3), expected_next)
    again = evaluate_generation(model, tok, rows, seed=5, **kwargs)
    other = evaluate_generation(model, tok, rows, seed=6, **kwargs)
    outputs = [s["output"] for s in first.samples]
    assert len(outputs) == 12 and outputs == [s["output"] for s in again.samples]
    assert outputs != [s["output"] for s in other.samples]
    assert len(set(outputs)) > 3  # sampled, not greedy
    # avg@n / pass@n follow from the saved verdicts: score with a regex matching whatever was sampled
    for s in rows:
        s["answer"] = "|".join(
            re.escape(o["output"].strip()) for o in first.samples if o["prompt"] == s["prompt"]
        )
    rows[2]["answer"] = "no"
    full = evaluate_generation(model, tok, rows, seed=5, **kwargs)
    assert (
        full.tasks["x"].avg == 1.0
        and full.tasks["y"].avg == 0.0
        and full.overall.pass_ == pytest.approx(2 / 3)
    )
    assert set(full.metrics()) >= {"gen/avg@4", "gen/pass@4", "gen/x/avg@4", "gen/y/pass@4"}


def test_greedy_with_n_above_one_is_refused(random_model):
    model, tok = random_model
    with pytest.raises(ValueError, match="needs sampling"):
        generate(model, tok, ["a"], n=2)


def test_bad_records_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer": null}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: missing field 'answer' or 'completion'"):
        load_records(str(path))
    with pytest.raises(UserError, match="missing.jsonl: no such data file"):
        load_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="no records with task 'zzz'"):
        load_records([{"prompt": "a", "answer": "b"}], tasks=["zzz"])


@pytest.fixture(scope="module")
def tiny_base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psft.data.models import resolve_model_name

    path = resolve_model_name("psft/tiny-base")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def suite_rows(tasks: tuple[str, ...], per_task: int) -> list[dict]:
    from psft.data.sft import builtin_rows

    return [r for t in tasks for r in builtin_rows(f"psft/{t}", "test", "prompt_completion")[:per_task]]


def test_fast_greedy_equals_model_generate_on_the_tiny_base_model(tiny_base):
    """The study's decoding (length-sorted batches, finished rows dropped) gives exactly `model.generate`'s
    completions and verdicts, in the records' order, on the suite's prompts (rows stop at different steps)."""
    model, tok = tiny_base
    rows = suite_rows(("arith", "reverse", "add", "json", "brackets"), 4)
    kwargs = dict(max_new_tokens=40, checker="math", progress=False)
    old = evaluate_generation(model, tok, rows, batch_size=256, decoder="hf", **kwargs)
    for batch_size in (256, 3):
        new = evaluate_generation(model, tok, rows, batch_size=batch_size, **kwargs)
        assert [(s["index"], s["prompt"], s["output"], s["correct"]) for s in new.samples] == [
            (s["index"], s["prompt"], s["output"], s["correct"]) for s in old.samples
        ]
        assert new.summary() == old.summary()
    lengths = {s["new_tokens"] for s in new.samples}
    assert len(lengths) > 3 and any(s["stopped"] for s in new.samples)  # rows stop at different steps
    assert old.overall.avg > 0  # some answers right: the verdicts are compared on both outcomes


def test_finished_rows_leave_the_batch(memorizer):
    """Each decoding step runs only the rows that have not stopped: the batch shrinks as answers end."""
    model, tok = memorizer
    prompts = [chat(p) for p in ANSWERS]  # answers of 2 to 12 characters, then end of turn
    sizes: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    try:
        fast = generate(model, tok, prompts, max_new_tokens=30)
        steps_fast, sizes[:] = list(sizes), []
        slow = generate(model, tok, prompts, max_new_tokens=30, decoder="hf")
    finally:
        hook.remove()
    assert fast == slow and [o[0] for o in fast] == list(ANSWERS.values())
    longest = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS.values())
    assert len(steps_fast) == longest + 1  # prefill + one step per token up to the last end of turn
    assert steps_fast[0] == 4 and steps_fast[-1] == 1 and steps_fast == sorted(steps_fast, reverse=True)
    assert sum(steps_fast) < sum(sizes)  # model.generate computes every row at every step


def test_bad_decoder_name_is_refused(random_model):
    model, tok = random_model
    with pytest.raises(ValueError, match="decoder must be"):
        generate(model, tok, ["a"], decoder="static")
