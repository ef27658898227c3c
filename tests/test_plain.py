"""ptqlib.classroom.plain: what a student's kernel sends back is plain data, exactly typed,
and a hostile file cannot make the grader build anything large or unexpected."""

import io
import json

import numpy as np
import pytest
import torch

from ptqlib.classroom.plain import MAX_ELEMENTS, NotPlainData, decode, encode


def test_plain_values_come_back_with_their_exact_types():
    value = {
        "pair": (1.5, -3),
        "list": [True, None, "text", float("nan"), float("-inf")],
        "int8": torch.tensor([[-128, 0], [5, 127]], dtype=torch.int8),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
        (1, 2): "a tuple key",
    }
    back = decode(encode(value))
    assert type(back) is dict and type(back["pair"]) is tuple and type(back["list"]) is list
    assert back["pair"] == (1.5, -3) and back[(1, 2)] == "a tuple key"
    assert back["list"][:3] == [True, None, "text"] and back["list"][4] == float("-inf")
    for key in ("int8", "bf16", "empty"):
        assert type(back[key]) is torch.Tensor and back[key].dtype == value[key].dtype
        assert torch.equal(back[key], value[key])


def test_what_an_honest_answer_holds_becomes_plain():
    class Number(int):
        def __eq__(self, other):  # a student's "always equal" int is just its value here
            return True

        __hash__ = int.__hash__

    class Always(torch.Tensor):
        def __eq__(self, other):
            return True

    answer = (
        np.float32(2.5),
        np.int64(7),
        np.array([1, 2], dtype=np.int16),
        torch.nn.Parameter(torch.ones(2)),
        torch.Size([2, 3]),
        Number(4),
        torch.zeros(2).as_subclass(Always),
    )
    back = decode(encode(answer))
    assert back[:2] == (2.5, 7) and type(back[1]) is int
    assert type(back[2]) is torch.Tensor and back[2].dtype == torch.int16
    assert type(back[3]) is torch.Tensor and not back[3].requires_grad
    assert back[4] == (2, 3) and type(back[5]) is int and back[5] == 4
    assert type(back[6]) is torch.Tensor and back[6].tolist() == [0.0, 0.0]


def self_containing_list() -> list:
    items: list = []
    items.append(items)
    return items


@pytest.mark.parametrize(
    "value",
    [
        object(),
        lambda: 1,
        torch.nn.Linear(2, 2),
        torch.zeros(2, dtype=torch.complex64),
        torch.zeros(2).to_sparse(),
        torch.zeros(MAX_ELEMENTS + 1, dtype=torch.int8),
        "x" * (8 * MAX_ELEMENTS + 8),  # 16 MB of text
        10**1000,  # JSON cannot even write it (Python's 4300-digit limit is near)
        self_containing_list(),
    ],
)
def test_anything_else_is_refused_when_encoding(value):
    with pytest.raises(NotPlainData):
        encode(value)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"tensor": "int8", "shape": [1000000000], "data": ""}',  # no 1 GB from a tiny file
        '{"tensor": "int8", "shape": [4], "data": "AA=="}',  # 1 byte for 4 values
        '{"tensor": "float32", "shape": [-1], "data": ""}',
        '{"tensor": "complex64", "shape": [0], "data": ""}',
        '{"tensor": "int8", "shape": [1], "data": "not base64!"}',
        '{"object": "os.system"}',
        '{"dict": [[[1], 2]]}',  # a list as a key
        "[" * 100 + "]" * 100,
        json.dumps(list(range(MAX_ELEMENTS + 1))),
        "1" * 5000,  # an integer Python refuses to read from text
    ],
)
def test_hostile_text_is_refused_when_decoding(text):
    with pytest.raises(NotPlainData):
        decode(text)


def test_the_pickle_loader_this_replaces_builds_huge_objects_from_tiny_files():
    """Why the answers are not torch.load(weights_only=True) files: that loader calls
    bytearray(n) for any n, and rebuilds a 10**9-element tensor from 1.5 kB."""

    class Payload:
        def __reduce__(self):
            return (bytearray, (10**6,))

    buffer = io.BytesIO()
    torch.save({"x": Payload(), "big": torch.zeros(1).expand(10**9)}, buffer)
    assert len(buffer.getvalue()) < 5000
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert len(loaded["x"]) == 10**6 and loaded["big"].numel() == 10**9


def test_the_collector_turns_whatever_a_function_does_into_a_result():
    from ptqlib.classroom.collect import answer

    class Hostile(torch.Tensor):
        def detach(self):
            raise RuntimeError("no")

    def raises_system_exit():
        raise SystemExit(3)

    assert answer(lambda: (1, torch.ones(2, dtype=torch.int8)), [])[0] == "returned"
    assert answer(lambda: torch.zeros(2).as_subclass(Hostile), [])[0] == "not plain"
    assert answer(lambda: object(), []) == ["not plain", "a object"]
    assert answer(raises_system_exit, []) == ["raised", "SystemExit: 3"]
    assert answer(lambda x: x + 1, [1]) == ["returned", 2]
