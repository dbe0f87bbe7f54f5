"""Tool calls read as the answer streams (api/call_stream.py): in any pieces, the deltas add up
to the calls the whole answer reads as, and the content to its text outside them; a call goes
out once its name is written, its arguments as they are written."""
from __future__ import annotations

import json
import random

import pytest

from engine.outputs import CompletionOutput, RequestOutput

from api.call_stream import CallStream, read_calls
from api.streaming import AnswerDeltas
from api.tool_calls import ToolCalling
from tests.api.test_chat_tools import TWO_CALLS

RUN = {"run": {"command": {"type": "string"}, "n": {"type": "integer"}}}
ANSWERS = [
    ("hermes", TWO_CALLS),
    ("hermes", 'x <tool_call>{"arguments": {"a": "}"}, "name": "f"}</tool_call> then < b'),  # arguments first
    ("hermes", '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>'),  # arguments as text
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"s": "a\\\\\\"b{", "t": [1, {"u": "]"}]}}\n</tool_call>'),
    ("hermes", "<tool_call>{not json}</tool_call> and a < b <tool_c"),
    ("qwen3_coder", "Running.\n<tool_call>\n<function=run>\n<parameter=command>\nls <b> -la\n\n</parameter>\n"
                    "<parameter=n>\n30\n</parameter>\n</function>\n</tool_call>\nDone."),
    ("qwen3_coder", "<tool_call>\n<function=run>\n<parameter=command>\necho \"hi\"\\n</para"),  # cut short
    ("llama3", ' {"name": "f", "parameters": {"q": "a;b"}}; {"name": "g", "parameters": {}}'),
    ("llama3", 'The answer is {"name": 1}.'),
    ("mistral", 'ok[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]'),
    ("mistral_args", '[TOOL_CALLS]f[ARGS]{"a": "x\\"}"}[TOOL_CALLS]g[ARGS]{}'),
]


def streamed(calling: ToolCalling, pieces: list[str]) -> tuple[str, list[tuple[str, str, str]], list]:
    """(the content, each call's (id, name, arguments) put together from its deltas, the calls made);
    each call said to have ended is as made, and ended once."""
    stream, content, calls, ended = CallStream(calling), "", {}, []
    for i, piece in enumerate(pieces):
        read = stream.add(piece, finished=i == len(pieces) - 1)
        content += read.content
        for d in read.deltas:
            if d.call is not None:
                assert d.index == len(calls) and not d.arguments
                calls[d.index] = [d.call.id, d.call.name, ""]
            calls[d.index][2] += d.arguments
        ended += read.ended  # whole by now, as the deltas so far have them
        assert all((c.id, c.name, c.arguments) == tuple(calls[j]) for j, c in enumerate(ended))
    assert ended == read.made[:len(ended)] and len(read.made) - len(ended) <= 1  # at most the last cut short
    return content, [tuple(calls[i]) for i in sorted(calls)], read.made


def cut(text: str, rng: random.Random) -> list[str]:
    at = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 24))))
    return [text[a:b] for a, b in zip([0, *at], [*at, len(text)])]


@pytest.mark.parametrize("fmt,answer", ANSWERS)
def test_any_pieces_add_up_to_the_whole_answers_calls(fmt, answer):
    calling, rng = ToolCalling(fmt, schemas=RUN), random.Random(7)
    content, calls = read_calls(answer, calling)
    for _ in range(300):
        got, deltas, made = streamed(calling, cut(answer, rng))
        assert [(c.id, c.name, c.arguments) for c in made] == deltas
        assert [(c.name, c.arguments) for c in made] == [(c.name, c.arguments) for c in calls]
        assert (got.strip() or None) == content if calls else got == answer


def test_how_the_answers_read():
    read = {answer: read_calls(answer, ToolCalling(fmt, schemas=RUN)) for fmt, answer in ANSWERS}
    assert [(c.name, json.loads(c.arguments)) for c in read[ANSWERS[1][1]][1]] == [("f", {"a": "}"})]
    assert read[ANSWERS[1][1]][0] == "x  then < b"
    assert json.loads(read[ANSWERS[3][1]][1][0].arguments) == {"s": 'a\\"b{', "t": [1, {"u": "]"}]}
    assert read[ANSWERS[4][1]] == (ANSWERS[4][1], [])
    content, (run,) = read[ANSWERS[5][1]]
    assert content == "Running.\n\nDone." and json.loads(run.arguments) == {"command": "ls <b> -la\n", "n": 30}
    assert json.loads(read[ANSWERS[6][1]][1][0].arguments) == {"command": 'echo "hi"\\n</para'}
    assert read[ANSWERS[8][1]] == (ANSWERS[8][1], [])
    assert [c.name for c in read[ANSWERS[9][1]][1]] == ["f", "g"] and read[ANSWERS[9][1]][0] == "ok"
    assert all(len(c.id) == 9 for c in read[ANSWERS[10][1]][1])


def test_a_call_goes_out_as_it_is_written():
    stream = CallStream(ToolCalling("hermes"))
    assert stream.add("Sure. <tool", False).content == "Sure. "  # a piece of the marker is held
    assert stream.add('_call>\n{"name": "write", "argu', False).parts == []
    opening = stream.add('ments": {"path": "a.py", "text": "de', False).parts
    assert opening[0].call.name == "write" and opening[1].arguments == '{"path": "a.py", "text": "de'
    assert stream.add("f f():", False).deltas[0].arguments == "f f():"
    closing = stream.add('"}}\n</tool_call>\n', False)
    assert closing.deltas[0].arguments == '"}' and closing.content == ""  # whitespace after a call: no content
    last = stream.add("\n", True)
    assert last.made[0].arguments == '{"path": "a.py", "text": "def f():"}' and last.content == ""


def test_a_qwen3_coder_string_parameter_goes_out_as_it_is_written():
    stream = CallStream(ToolCalling("qwen3_coder", schemas=RUN))

    def more(text: str) -> str:
        return "".join(d.arguments for d in stream.add(text, False).deltas)
    assert more("<tool_call>\n<function=run>\n<parameter=command>\n") == '{"command": "'
    assert more('echo "a"\n') == 'echo \\"a\\"'  # its last newline held: it may be the one left out
    assert more("ls\n</param") == "\\nls"
    assert more("eter>\n<parameter=n>\n3") == '", "n": '  # an integer goes out once it has ended
    assert more("0\n</parameter>\n</function>") == "30}"
    made = stream.add("\n</tool_call>", True).made
    assert json.loads(made[0].arguments) == {"command": 'echo "a"\nls', "n": 30}


def test_one_call_where_calls_may_not_be_parallel():
    content, deltas, made = streamed(ToolCalling("hermes", parallel=False), [TWO_CALLS[:70], TWO_CALLS[70:]])
    assert [name for _, name, _ in deltas] == ["get_weather"] == [c.name for c in made]
    assert content == "Let me check.\n"  # the whitespace between and after the calls is not content


def test_a_call_cut_short_stays_a_call_when_streamed_and_is_text_when_read_whole():
    answer = '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2'
    content, deltas, made = streamed(ToolCalling("hermes"), [answer[:30], answer[30:]])
    assert deltas == [(made[0].id, "f", '{"a": [1, 2')] and content == ""
    assert read_calls(answer, ToolCalling("hermes")) == (answer, [])


def test_a_stream_whose_first_output_has_finished_still_gets_its_call_deltas():
    """The Responses and Anthropic streams build their call events from the deltas: an answer that
    arrives whole in one output must bring them too (read whole, it would bring only the calls)."""
    done = RequestOutput("r", None, [1], [CompletionOutput(0, TWO_CALLS, [2], "stop")], finished=True)
    streamed_read = AnswerDeltas(ToolCalling("hermes")).take(done)[1]
    assert [d.call.name for d in streamed_read.deltas if d.call] == ["get_weather", "now"]
    assert [c.name for c in streamed_read.made] == ["get_weather", "now"]
    whole = AnswerDeltas(ToolCalling("hermes")).new(done.outputs[0])[1]
    assert whole.content == "Let me check." and [c.name for c in whole.made] == ["get_weather", "now"]


FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool_c", "all>", "\n", " ", '{"name": "f", "arguments": ',
             '{"name": "g", "parameters": ', '{"a": 1}', '{"s": "x\\"}"}', "}", "{", "[", "]", ",", ";", '"', "\\",
             "[TOOL_CALLS]", "[ARGS]", "f", "<function=run>", "<parameter=command>", "</parameter>", "<parameter=n>",
             "</function>", "42", "é☃", "<", "text ", '{"name": "f"}', '"arguments": {"x": [1, {"y": "]"}]}}', "😀"]


@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder", "llama3", "mistral", "mistral_args"])
def test_random_answers_in_random_pieces(fmt):
    """Answers put together from the formats' markers and JSON pieces at random, cut at random: the
    deltas add up to the calls made, the calls said to have ended are those made (less at most one
    cut short), a whole reading that finds calls finds the same with the same content, and an answer
    without calls comes back as it is, every character of it."""
    rng = random.Random(fmt)
    for _ in range(1500):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))
        calling = ToolCalling(fmt, parallel=rng.random() < 0.8, schemas=RUN)
        content, deltas, made = streamed(calling, cut(text, rng))
        whole_content, whole = read_calls(text, calling)
        if whole:
            assert [(c.name, c.arguments) for c in whole] == [(c.name, c.arguments) for c in made], text
            assert (content.strip() or None) == whole_content, text
        elif not made:
            assert content == text
