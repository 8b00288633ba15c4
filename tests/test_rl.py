"""The RL stage: checker rewards on known completions, GRPO data, token entropy, the chain and `psft rl`."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from psft.cli import main
from psft.cli.stage import parse_checkpoints
from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.errors import UserError
from psft.eval.entropy import mean_token_entropy
from psft.stages.rewards import checker_reward, format_reward
from psft.stages.rl import RLConfig, load_rl_dataset, run_rl_stage


def said(text):
    return [{"role": "assistant", "content": text}]


def test_math_reward_accepts_the_right_boxed_answer_and_rejects_a_wrong_one():
    reward = checker_reward("math")
    completions = [said("4*2=8. 3+8=11. \\boxed{11}"), said("4*2=8. 3+8=12. \\boxed{12}"), "so \\boxed{1/2}"]
    assert reward([None] * 3, completions, answer=["11", "11", "0.5"]) == [1.0, 0.0, 1.0]


def test_each_row_uses_its_own_checker_and_rows_without_one_the_default():
    reward = checker_reward("math")
    completions = [said("olleh"), said("Olleh"), said('{"answer": "olleh"}'), said('{"answer": "hello"}')]
    completions += [said("[olleh]"), said("olleh"), said("\\boxed{7}")]
    answers = ["olleh", "olleh", "olleh", "olleh", "olleh", "olleh", "7"]
    checkers = ["exact", "exact", "json_answer", "json_answer", "bracketed", "bracketed", None]
    got = reward([None] * 7, completions, answer=answers, checker=checkers)
    assert got == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_unknown_checker_is_a_clear_error():
    with pytest.raises(UserError, match="unknown checker 'nope'.*registered:.*math"):
        checker_reward("nope")
    with pytest.raises(UserError, match="unknown checker 'nope'"):
        checker_reward("math")([None], [said("1")], answer=["1"], checker=["nope"])


def test_unknown_checker_in_the_data_fails_before_any_model_loads(tmp_path):
    data = tmp_path / "rl.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2", "checker": "nope"}) + "\n")
    with pytest.raises(UserError, match="unknown checker 'nope'"):
        load_rl_dataset(str(data))


def test_format_reward_checks_the_answer_shape_only():
    reward = format_reward("math")
    completions = [
        said("\\boxed{12}"),
        said("12"),
        said('{"answer": "x"}'),
        said("x"),
        said("[x]"),
        said("x"),
    ]
    checkers = ["math", "math", "json_answer", "json_answer", "bracketed", "exact"]
    assert reward([None] * 6, completions, checker=checkers) == [1.0, 0.0, 1.0, 0.0, 1.0, None]


def test_rl_dataset_from_the_suite_and_from_a_jsonl(tmp_path):
    arith = load_rl_dataset("psft/arith")
    assert len(arith) == 500 and {"prompt", "answer", "checker", "task"} <= set(arith.column_names)
    row = arith[0]
    assert row["prompt"][0]["role"] == "user" and row["checker"] == "math" and row["answer"].isdigit()
    data = tmp_path / "rl.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "Say hi."}], "answer": "hi", "checker": "exact"}]
    rows += [{"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    local = load_rl_dataset(str(data))
    assert local["answer"] == ["hi", "4"] and local["checker"] == ["exact", "math"]


def test_entropy_of_a_uniform_model_is_log_vocab_size():
    tokenizer = make_char_tokenizer()
    model = make_tiny_llama(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next-token distribution uniform
    pairs = [([{"role": "user", "content": "Compute 1+2."}], "1+2=3. \\boxed{3}"), ("plain ", "text")]
    entropy = mean_token_entropy(model, tokenizer, pairs, batch_size=1)
    assert entropy == pytest.approx(math.log(len(tokenizer)), rel=1e-5)


@pytest.fixture
def regex_data(tmp_path):
    """Prompts whose reward (a regex checker) a random model earns on some samples and not on others."""
    path = tmp_path / "rl.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Task {i}."}],
            "answer": "[^a-m]*",
            "checker": "regex",
            "task": "t",
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_fields(output_dir, **overrides):
    fields = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        mask_truncated_completions=False,  # a random model never stops: keep its completions in the loss
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return fields | overrides


def test_chain_runs_rl_from_each_checkpoint_and_reports_before_and_after(
    tmp_path, tiny_model_dir, regex_data
):
    args = RLConfig(**rl_fields(tmp_path / "rl"))
    assert (args.loss_type, args.epsilon_high, args.beta) == ("dapo", 0.28, 0.0)
    report = run_rl_stage(
        {"a": str(tiny_model_dir), "b": str(tiny_model_dir)}, args, str(regex_data),
        in_domain=[str(regex_data)], out_of_domain="psft/general", eval_limit=1, max_new_tokens=4,
        base_model=str(tiny_model_dir),
    )  # fmt: skip
    saved = json.loads((tmp_path / "rl" / "rl_report.json").read_text())
    assert saved["methods"].keys() == {"a", "b"} and saved["rl"]["epsilon_high"] == 0.28
    before = load_file(tiny_model_dir / "model.safetensors")
    for name in ("a", "b"):
        result = report["methods"][name]
        assert result["rl_train"]["steps"] == 2 and result["rl_train"]["reward_first"] is not None
        for stage in ("before_rl", "after_rl"):
            assert result[stage]["out_of_domain"]["num_prompts"] == 6  # one per general task
            assert 0 <= result[stage]["in_domain"]["accuracy"] <= 1
            assert result[stage]["out_of_domain"]["entropy"] > 0
        assert result["before_rl"]["drift"]["kl"] == pytest.approx(0.0, abs=1e-6)  # the start is the base
        assert result["after_rl"]["drift"]["kl"] > 0
        after = load_file(tmp_path / "rl" / name / "model.safetensors")
        assert any(not torch.equal(before[k], after[k]) for k in before), "RL did not change the weights"
    # same budget and seed from the same checkpoint: the same result
    assert report["methods"]["a"]["after_rl"] == report["methods"]["b"]["after_rl"]


def test_cli_runs_rl_from_a_yaml(tmp_path, tiny_model_dir, regex_data):
    config = rl_fields(tmp_path / "out") | dict(
        model_name_or_path=str(tiny_model_dir), dataset_name=str(regex_data)
    )
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["rl", "--config", str(path), "--max_steps", "1"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["rl", "--output_dir", str(tmp_path), "--use_cpu", "true"]) == 2
    assert "no model: set model_name_or_path" in capsys.readouterr().err
    with pytest.raises(UserError, match="NAME=PATH"):
        parse_checkpoints(["runs/sft"])


def test_compare_rl_chains_the_same_rl_run_from_every_fine_tuned_method(tmp_path, tiny_model_dir, regex_data):
    compare = dict(
        model=str(tiny_model_dir),
        train_data="psft/arith",
        out_of_domain=["psft/upper"],
        eval_size=2,
        eval_every=2,
        max_new_tokens=4,
        methods=[{"name": "sft", "loss_type": "sft"}, {"name": "psft", "loss_type": "psft"}],
        training={
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "mini_batches_per_rollout": 2,
            "use_cpu": True,
        },
    )
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(compare))
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump(rl_fields("ignored", dataset_name=str(regex_data))))
    argv = ["compare", "--config", str(tmp_path / "compare.yaml"), "--output_dir", str(tmp_path / "cmp")]
    assert main(argv + ["--rl", str(tmp_path / "rl.yaml")]) == 0
    report = json.loads((tmp_path / "cmp" / "rl" / "rl_report.json").read_text())
    assert report["methods"].keys() == {"sft", "psft"}
    for name in ("sft", "psft"):
        assert report["methods"][name]["checkpoint"] == str(tmp_path / "cmp" / f"{name}-seed0")
        assert report["methods"][name]["rl_train"]["steps"] == 2
        assert report["methods"][name]["before_rl"]["out_of_domain"]["num_prompts"] == 2
        assert (tmp_path / "cmp" / "rl" / name / "model.safetensors").is_file()
