"""Bad training data never trains silently: one-line errors naming the line/record and field, or counted skips."""

import json

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psft.data.sft import load_sft_dataset, validate_records
from psft.errors import UserError

WORDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(
    str.strip
)


def pc_record(prompt, completion):
    return {"prompt": prompt, "completion": completion}


def chat_record(prompt, completion):
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}


def _set(path, value):
    def mutate(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return json.dumps(record).encode()

    return mutate


# (field named in the error, how a good record of that kind is broken)
PC_BREAKS = [
    ("'completion'", _set(["completion"], 5)),
    ("'completion'", _set(["completion"], "")),
    ("'completion'", _set(["completion"], KeyError)),
    ("'prompt'", _set(["prompt"], [1, 2])),
    ("'prompt'", _set(["prompt"], None)),
]
CHAT_BREAKS = [
    ("messages[1].role", _set(["messages", 1, "role"], "bot")),
    ("messages[0].role", _set(["messages", 0, "role"], KeyError)),
    ("messages[1].content", _set(["messages", 1, "content"], 3.5)),
    ("'messages'", _set(["messages"], "hello")),
    ("'messages[0]'", _set(["messages", 0], ["user", "x"])),
    ("'messages'", _set(["messages", 1, "role"], "user")),  # no assistant turn left
    ("'messages'", _set(["messages", 1, "content"], "  ")),
]
RAW_BREAKS = [
    ("invalid JSON", lambda record: json.dumps(record).encode()[:-1]),
    ("not UTF-8", lambda record: json.dumps(record).encode()[:-1] + b'\xff"}'),
    ("expected a JSON object", lambda record: json.dumps([record]).encode()),
]


@st.composite
def jsonl_files(draw):
    """(kind, lines as bytes, {line number: expected text in the error}, good records)."""
    kind = draw(st.sampled_from(["prompt-completion", "conversational"]))
    make, breaks = (pc_record, PC_BREAKS) if kind == "prompt-completion" else (chat_record, CHAT_BREAKS)
    n = draw(st.integers(1, 6))
    lines, bad, good = [], {}, []
    for number in range(1, n + 1):
        record = make(draw(WORDS), draw(WORDS))
        if draw(st.booleans()) and draw(st.booleans()):
            field, mutate = draw(st.sampled_from(breaks + RAW_BREAKS))
            lines.append(mutate(record))
            bad[number] = field
        else:
            lines.append(json.dumps(record).encode())
            good.append(record)
    return kind, lines, bad, good


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=jsonl_files(), skip=st.booleans())
def test_generated_bad_records_fail_naming_line_and_field_or_load(tmp_path, case, skip):
    kind, lines, bad, good = case
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    if bad and (not skip or not good):
        with pytest.raises(UserError) as err:
            load_sft_dataset(str(path), skip_invalid=skip)
        message = str(err.value)
        assert "\n" not in message and str(path) in message
        if skip:  # every record bad
            assert f"all {len(lines)} records are invalid (first at line {min(bad)})" in message
        else:
            assert f"{path}:{min(bad)}: " in message
            assert bad[min(bad)].strip("'") in message
        return
    dataset = load_sft_dataset(str(path), skip_invalid=skip)
    assert len(dataset) == len(good)
    assert [dict(row) for row in dataset] == good


def test_an_empty_file_and_a_blank_file_are_errors(tmp_path):
    for content in ("", "\n  \n"):
        path = tmp_path / "train.jsonl"
        path.write_text(content)
        with pytest.raises(UserError, match="has no records"):
            load_sft_dataset(str(path))


def test_mixed_formats_in_one_file_name_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(pc_record("a", "b")) + "\n" + json.dumps(chat_record("a", "b")) + "\n")
    with pytest.raises(
        UserError, match=r"train.jsonl:2: a conversational record in a prompt-completion file"
    ):
        load_sft_dataset(str(path))


def test_json_and_parquet_files_are_validated_by_record(tmp_path):
    rows = [pc_record("a", "b"), pc_record("c", "")]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"train.json: record 1: field 'completion': is empty"):
        load_sft_dataset(str(tmp_path / "train.json"))
    Dataset.from_list(rows).to_parquet(tmp_path / "train.parquet")
    assert len(load_sft_dataset(str(tmp_path / "train.parquet"), skip_invalid=True)) == 1


def test_validate_records_on_a_python_dataset_names_the_record_and_skips_with_a_count():
    rows = [chat_record("a", "b"), chat_record("c", "d"), {"messages": [{"role": "human", "content": "x"}]}]
    rows[2]["messages"].append({"role": "assistant", "content": "y"})
    dataset = Dataset.from_list(rows)
    with pytest.raises(UserError, match=r"train: record 2: field 'messages\[0\].role': unknown role 'human'"):
        validate_records(dataset, "train")
    kept = validate_records(dataset, "train", skip_invalid=True)
    assert len(kept) == 2 and kept[1] == rows[1]
    with pytest.raises(UserError, match="the dataset is empty"):
        validate_records(dataset.select([]), "train")
