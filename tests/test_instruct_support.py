"""Support for real instruct models, on the tiny tokenizer (fast): chat-template patching for assistant-only
loss, the instruct tasks and their checkers, the eval checker default, compare's defaults per model."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from psft import PSFTConfig, PSFTTrainer
from psft.data.templates import TEMPLATES_DIR, patch_chatml, prepare_training_template, resolve_template_path
from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.errors import UserError
from psft.eval.checkers import get_checker, infer_checker
from psft.eval.records import EvalRecord
from psft.experiments.plan import CompareConfig
from psft.experiments.presets import INSTRUCT_DEFAULTS
from psft.tasks import generate

# SmolLM2-135M-Instruct's chat template, verbatim (ChatML in one line, a default system prompt, no markers)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def smollm2_like_tokenizer():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer


def masked_text(tokenizer, template=None) -> str:
    out = tokenizer.apply_chat_template(
        CHAT, return_dict=True, return_assistant_tokens_mask=True, chat_template=template
    )
    return tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])


def test_chatml_patch_renders_the_same_text_and_masks_each_answer_with_its_end_token():
    tokenizer = smollm2_like_tokenizer()
    patched = prepare_training_template(tokenizer, None, "my/model")
    assert patched is not None and "{% generation %}" in patched
    for generation_prompt in (False, True):
        assert tokenizer.apply_chat_template(
            CHAT, tokenize=False, chat_template=patched, add_generation_prompt=generation_prompt
        ) == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=generation_prompt)
    assert masked_text(tokenizer, patched) == "Yo!<|im_end|>4<|im_end|>"


def test_patch_leaves_other_templates_alone_and_the_error_names_the_model_and_the_fix():
    assert patch_chatml("{% for m in messages %}{{ m['content'] }}{% endfor %}") is None
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    )
    with pytest.raises(UserError, match=r"^models/x: .*set chat_template_path: psft/chatml"):
        prepare_training_template(tokenizer, None, "models/x")
    tokenizer.chat_template = None
    with pytest.raises(UserError, match=r"^models/x: the tokenizer has no chat template"):
        prepare_training_template(tokenizer, None, "models/x")


def test_chat_template_path_is_checked_instead_of_the_models_own():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # unusable alone
    template = prepare_training_template(tokenizer, "psft/chatml", "models/x")
    assert template == (TEMPLATES_DIR / "chatml.jinja").read_text()
    assert resolve_template_path("psft/chatml") == str(TEMPLATES_DIR / "chatml.jinja")
    with pytest.raises(UserError, match="no built-in template 'psft/nope'; built-in: psft/chatml"):
        resolve_template_path("psft/nope")


def test_trainer_trains_the_assistant_turns_of_a_template_without_markers(tmp_path):
    """Through PSFTTrainer (as `psft train`): the model's template is patched, and `chat_template_path` works
    as in TRL, where psft used to refuse it for the model's own template."""
    tokenizer = smollm2_like_tokenizer()
    data = Dataset.from_list([{"messages": CHAT}] * 2)
    for path in (None, "psft/chatml"):
        args = PSFTConfig(
            output_dir=str(tmp_path),
            assistant_only_loss=True,
            chat_template_path=path,
            report_to=[],
            use_cpu=True,
        )
        trainer = PSFTTrainer(
            model=make_tiny_llama(tokenizer), args=args, train_dataset=data, processing_class=tokenizer
        )
        labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
        assert tokenizer.decode(labels[labels != -100].tolist()) == "Yo!<|im_end|>4<|im_end|>"
        tokenizer.chat_template = SMOLLM2_TEMPLATE


def test_word_problems_are_right_and_boxed():
    math = get_checker("math")
    for example in generate("word_math", 50, seed=3):
        assert example.completion.endswith(f"The answer is \\boxed{{{example.answer}}}.")
        assert example.prompt.endswith("Put your final answer within \\boxed{}.")
        assert math(example.completion, example.answer).correct
        assert not math(example.completion.replace(f"{{{example.answer}}}", "{-1}"), example.answer).correct
        for step in example.completion.split(". ")[:-1]:  # every "a op b=c" step is true arithmetic
            for expr, value in (s.split("=") for s in step.split(" ") if "=" in s):
                assert eval(expr) == int(value.rstrip(".")), step  # noqa: S307 (digits and operators only)


@pytest.mark.parametrize(
    "constraint, good, bad",
    [
        ("uppercase", "PARIS", "Paris"),
        ("lowercase", "paris is it", "Paris"),
        ("quoted", '"Paris"', "Paris"),
        ("prefix", "Answer: Paris", "The answer: Paris"),
        ("json", '{"answer": "Paris"}', "answer: Paris"),
        ("max_words", "It is Paris", "The capital is Paris"),
    ],
)
def test_instruction_checker_needs_the_instruction_followed(constraint, good, bad):
    check = get_checker("instruction")
    assert check(good, constraint) and not check(bad, constraint) and not check("", constraint)


def test_instruct_and_trivia_references_pass_and_wrong_answers_fail():
    for task in ("instruct", "trivia"):
        for example in generate(task, 40, seed=2):
            assert get_checker(example.checker)(example.completion, example.answer), example
    mentions = get_checker("mentions")
    assert mentions("The capital of France is Paris.", "paris") and not mentions("It is Lyon.", "paris")
    assert mentions("Blue!", "red|blue|yellow") and not mentions("Seventy.", "seven|7")


def test_eval_checker_default_follows_the_references():
    def records(*refs, checker=None):
        return [EvalRecord("q", ref, checker=checker) for ref in refs]

    assert infer_checker(records("12", "-3.5", "\\boxed{7}", "The answer is \\boxed{x+1}.")) == "math"
    assert infer_checker(records("12", "Paris")) == "exact"
    assert infer_checker(records("Paris", checker="mentions") + records("4")) == "math"


def test_compare_defaults_suit_the_model(tmp_path):
    tiny = CompareConfig.for_model()
    assert tiny.train_data == "psft/arith" and tiny.out_of_domain == []
    real = CompareConfig.for_model(model="models/smollm2", eval_size=4)
    assert real.train_data == "psft/word_math" and real.eval_size == 4 and real.dtype == "float32"
    assert real.out_of_domain == INSTRUCT_DEFAULTS["out_of_domain"]
    path = tmp_path / "compare.yaml"
    path.write_text(json.dumps({"model": "models/smollm2", "dtype": "bfloat16", "checker": "math"}))
    loaded = CompareConfig.from_yaml(str(path))
    assert loaded.in_domain == ["psft/word_math"] and loaded.dtype == "bfloat16" and loaded.checker == "math"


def test_eval_wraps_string_prompts_in_the_chat_template_unless_told_not_to():
    from psft.cli.eval import _as_chat

    tokenizer = make_char_tokenizer()
    records = [EvalRecord("What is 2+2?", "4"), EvalRecord([{"role": "user", "content": "hi"}], "yo")]
    metrics: dict = {}
    wrapped = _as_chat(records, tokenizer, raw=False, metrics=metrics)
    assert wrapped[0].prompt == [{"role": "user", "content": "What is 2+2?"}] and wrapped[1] == records[1]
    assert metrics == {"chat_template": True}
    assert _as_chat(records, tokenizer, raw=True, metrics=metrics) == records and not metrics["chat_template"]
    tokenizer.chat_template = None
    assert _as_chat(records, tokenizer, raw=False, metrics=metrics) == records  # a base model: raw text
