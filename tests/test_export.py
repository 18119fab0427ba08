"""--output-format: the selected rows as messages / ShareGPT / Alpaca records a trainer reads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmq.cli import build_parser
from kmq.cli.args import select_config
from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.export import to_record
from kmq.pipeline import select_file
from tests.test_pipeline import config, write_pool
from tests.test_validate import write_rows

CHAT = Example(
    "c-1",
    (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", "2 + 2?"),
        Message("assistant", "4"),
    ),
    row=0,
    source="chat",
)


def test_messages_record() -> None:
    assert to_record(CHAT, "messages") == {
        "id": "c-1",
        "source": "chat",
        "messages": [{"role": m.role, "content": m.content} for m in CHAT.messages],
    }


def test_sharegpt_record_uses_its_role_names() -> None:
    tool = Example("t", (Message("user", "q"), Message("tool", "r"), Message("assistant", "a")), 0)
    assert to_record(tool, "sharegpt") == {
        "id": "t",
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "observation", "value": "r"},
            {"from": "gpt", "value": "a"},
        ],
    }


def test_alpaca_record_keeps_history_and_system() -> None:
    assert to_record(CHAT, "alpaca") == {
        "id": "c-1",
        "source": "chat",
        "instruction": "2 + 2?",
        "input": "",
        "output": "4",
        "system": "Be brief.",
        "history": [["Hi", "Hello"]],
    }


@pytest.mark.parametrize(
    "roles",
    [("user", "tool", "assistant"), ("user", "user", "assistant"), ("user", "assistant", "user")],
)
def test_alpaca_refuses_what_it_cannot_hold(roles: tuple[str, ...]) -> None:
    example = Example("x", tuple(Message(r, "t") for r in roles), 7)  # type: ignore[arg-type]
    with pytest.raises(
        KmqError, match=r"row 7 \(id 'x'\) has no Alpaca form.*with output_format messages"
    ):
        to_record(example, "alpaca")


def test_unknown_output_format_lists_the_choices() -> None:
    with pytest.raises(KmqError, match="one of native, messages, sharegpt, alpaca; got 'chatml'"):
        to_record(CHAT, "chatml")
    with pytest.raises(KmqError, match="native output copies the input rows"):
        to_record(CHAT, "native")


def smollm2_tokenizer() -> object:
    transformers = pytest.importorskip("transformers")
    from kmq.models import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except KmqError as exc:
        pytest.skip(str(exc))
    return transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.mark.model
def test_messages_output_loads_with_datasets_and_takes_smollm2_template(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    pool = write_rows(tmp_path / "chat.jsonl")
    run = select_file(
        config(
            tmp_path,
            pool,
            budget=4,
            k=2,
            on_invalid="skip",
            keep_duplicates=True,
            output_format="messages",
        )
    )
    out = tmp_path / "out" / "selected.jsonl"
    assert run.manifest.outputs["rows"] == "selected.jsonl"
    data = datasets.load_dataset("json", data_files=str(out), split="train")
    assert sorted(data["id"]) == ["lead", "lead-sys", "ok-0", "ok-1"]
    lead = data[data["id"].index("lead")]
    assert lead["messages"] == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]  # repaired: the greeting before the first user turn is gone
    tokenizer = smollm2_tokenizer()
    text = tokenizer.apply_chat_template(lead["messages"], tokenize=False)  # type: ignore[attr-defined]
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>" in text


def test_native_output_keeps_the_rows_as_read(tmp_path: Path) -> None:
    pool = write_rows(tmp_path / "chat.jsonl")
    select_file(config(tmp_path, pool, budget=4, k=2, on_invalid="skip", keep_duplicates=True))
    lines = (tmp_path / "out" / "selected.jsonl").read_text().splitlines()
    lead = next(json.loads(line) for line in lines if '"lead"' in line)
    assert lead["conversations"][0] == {"from": "gpt", "value": "Hi, how can I help?"}


def test_gzipped_input_gives_gzipped_jsonl(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    packed = tmp_path / "pool.jsonl.gz"
    packed.write_bytes(gzip.compress(pool.read_bytes()))
    select_file(config(tmp_path, packed, output_format="sharegpt"))
    text = gzip.decompress((tmp_path / "out" / "selected.jsonl.gz").read_bytes())
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 12
    assert all(r["conversations"][0]["from"] == "human" for r in records)
    assert {r["source"] for r in records} <= {"alpha", "beta", "gamma"}


def test_parquet_input_gives_parquet(tmp_path: Path) -> None:
    jsonl = tmp_path / "pool.jsonl"
    write_pool(jsonl)
    parquet = tmp_path / "pool.parquet"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    run = select_file(config(tmp_path, parquet, output_format="alpaca"))
    table = pq.read_table(tmp_path / "out" / "selected.parquet").to_pylist()
    assert len(table) == 12 and run.manifest.config["output_format"] == "alpaca"
    first = table[0]
    assert set(first) == {"id", "source", "instruction", "input", "output", "system", "history"}
    assert first["output"].startswith("answer ")


def test_hf_input_gives_a_save_to_disk_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    jsonl = tmp_path / "pool.jsonl"
    write_pool(jsonl)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    select_file(config(tmp_path, tmp_path / "hf", output_format="messages"))
    picked = datasets.load_from_disk(str(tmp_path / "out" / "selected"))
    assert len(picked) == 12 and picked.column_names == ["id", "source", "messages"]


def test_streaming_writes_native_only(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    with pytest.raises(KmqError, match=r"^output_format 'messages': streaming runs write"):
        select_file(config(tmp_path, pool, streaming=True, output_format="messages"))


def test_cli_flag_reaches_the_config() -> None:
    args = build_parser().parse_args(
        ["select", "p.jsonl", "--out", "o", "--output-format", "alpaca"]
    )
    assert select_config(args, out="o", method="kmq").output_format == "alpaca"
    assert build_parser().parse_args(["select", "p.jsonl", "--out", "o"]).output_format == "native"
