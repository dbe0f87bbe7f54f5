"""engine/json_schema.py: the automaton takes the prefixes of the JSON texts a schema accepts, set
against the jsonschema library on random documents; the engine's output follows the schema and
drafting changes nothing."""
from __future__ import annotations

import json
import random

import jsonschema
import pytest

from engine.json_object import ANY, JsonTokens
from engine.json_schema import compile_schema

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8}, "age": {"type": "integer"},
                   "score": {"type": "number"}, "tags": {"type": "array", "items": {"enum": ["a", "b", 3, None]},
                                                         "maxItems": 3},
                   "ok": {"type": "boolean"}, "pet": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pet"}]},
                   "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                            "items": False, "minItems": 2},
                   "kind": {"const": "person"}, "extra": {"type": ["string", "null"]}},
    "required": ["name", "age"], "additionalProperties": False,
    "$defs": {"pet": {"type": "object", "properties": {"name": {"type": "string"},
                                                       "friend": {"$ref": "#/$defs/pet"}},
                      "required": ["name"], "additionalProperties": False}},
}
OPEN = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
        "additionalProperties": {"type": "array", "items": {"type": "number"}, "minItems": 1}}
ROOT_ARRAY = {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}},
                                         "required": ["x"], "additionalProperties": False}, "minItems": 1}
SCHEMAS = [PERSON, OPEN, ROOT_ARRAY, {"type": "integer"}, {"enum": ["red", "green", 1.5]}, True]


def accepts(machine, text: str) -> bool:
    state = machine.feed(machine.start, text)
    return state is not None and machine.complete(state)


def random_value(rng: random.Random, depth: int = 0):
    """Any JSON value, biased towards the shapes of the schemas above (their keys and enums)."""
    pick = rng.randrange(10 if depth < 3 else 6)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.choice([0, 7, -3, 12345, 2.5, -0.125, 0.001])  # no 1.0: an integer is written as one here
    if pick in (2, 3):
        return rng.choice(["", "a", "b", "bob", "red", "green", "person", "a very long name", "é\"\\"])
    if pick in (4, 5):
        return rng.choice([1.5, "a", 3, None])
    if pick in (6, 7):
        keys = ["name", "age", "score", "tags", "ok", "pet", "pair", "kind", "extra", "id", "x", "other", "friend"]
        return {k: random_value(rng, depth + 1) for k in rng.sample(keys, rng.randint(0, 4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def schema_shaped(rng: random.Random, schema) -> object:
    """A value meant to follow `schema` (PERSON, OPEN or ROOT_ARRAY), sometimes broken on purpose."""
    if schema is PERSON:
        doc = {"name": rng.choice(["bob", "al", ""]), "age": rng.choice([3, -1, 2.5])}
        if rng.random() < 0.5:
            doc["tags"] = rng.sample(["a", "b", 3, None, "c"], rng.randint(0, 4))
        if rng.random() < 0.5:
            doc["pet"] = rng.choice([None, {"name": "rex"}, {"name": "rex", "friend": {"name": "tom"}}, {"age": 1}])
        if rng.random() < 0.3:
            doc["pair"] = rng.choice([["a", 1], ["a"], ["a", 1, 2], [1, "a"]])
        if rng.random() < 0.3:
            doc["kind"] = rng.choice(["person", "robot"])
        if rng.random() < 0.2:
            del doc[rng.choice(["name", "age"])]
        return dict(rng.sample(list(doc.items()), len(doc)))  # any order of keys
    if schema is OPEN:
        return {"id": rng.choice([1, "1"]), **{k: rng.choice([[1.5], [], ["x"]]) for k in rng.sample("pqr", 2)}}
    return [{"x": rng.choice([1, 2.5, "s"])} for _ in range(rng.randint(0, 2))]


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_the_automaton_accepts_what_jsonschema_validates(index):
    schema = SCHEMAS[index]
    machine = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(index)
    seen = {True: 0, False: 0}
    for trial in range(1500):
        value = schema_shaped(rng, schema) if trial % 2 and index < 3 else random_value(rng)
        text = json.dumps(value, ensure_ascii=False, indent=rng.choice([None, None, 1]),
                          separators=None if rng.random() < 0.5 else (",", ":"))
        valid = validator.is_valid(value)
        assert accepts(machine, text) == valid, (text, valid)
        seen[valid] += 1
        if valid:  # every prefix of a valid text is taken, and only the whole may end
            for end in range(len(text)):
                assert machine.feed(machine.start, text[:end]) is not None, text[:end]
    assert seen[True] > 25 and seen[False] > 25 or index >= 3


def test_what_cannot_be_enforced_is_refused_by_name():
    for schema, word in (({"type": "string", "pattern": "(?=a)"}, "lookaround"), ({"type": "string", "pattern": "(a)\\1"},
                         "escape"), ({"type": "string", "pattern": "a", "maxLength": 3}, "beside"),
                         ({"type": "string", "pattern": "a^"}, "anchor"),
                         ({"type": "integer", "multipleOf": 0.5}, "multipleOf"),
                         ({"type": "array", "uniqueItems": True}, "uniqueItems"),
                         ({"type": "number", "minimum": "1"}, "finite number"),
                         ({"type": "number", "exclusiveMaximum": True}, "needs maximum"),
                         ({"allOf": [{"type": "string"}, {"maxLength": 2}]}, "allOf"), ({"type": "date"}, "date"),
                         ({"properties": {"a\"b": {}}, "type": "object"}, "escapes"), (False, "false"),
                         ({"$ref": "#/$defs/none"}, "no such definition"),
                         ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "itself"),
                         ({"anyOf": [{"type": "null"}, {"$ref": "#"}]}, "itself"),
                         ({"type": "object", "properties": {"a": {}}, "required": ["x"]}, "required")):
        with pytest.raises(ValueError, match=word):
            compile_schema(schema)
    assert accepts(compile_schema({"type": "string", "format": "hostname", "title": "t"}), '"x"')  # annotations
    assert accepts(compile_schema({"type": "object"}), '{"any": [1, {"key": null}]}')  # no properties: any key
    assert not accepts(compile_schema({"type": "object", "properties": {"a": {}}}), '{"b": 1}')  # listed: only those


def test_keys_and_values_are_steered_as_they_are_written():
    machine = compile_schema(PERSON)
    assert machine.feed(machine.start, '{"na') is not None and machine.feed(machine.start, '{"nx') is None
    assert machine.feed(machine.start, '{"name":"bob"}') is None  # age is required before the object closes
    assert machine.feed(machine.start, '{"name":"bob","name"') is None  # once each
    assert machine.feed(machine.start, '{"age":1.') is None  # an integer
    assert machine.feed(machine.start, '{"kind":"per') is not None and machine.feed(machine.start, '{"kind":"pet') is None
    assert not machine.in_string(machine.feed(machine.start, '{"kind":"per'))  # an enum's text: no byte pieces
    assert machine.in_string(machine.feed(machine.start, '{"name":"b'))
    deep = '{"name":"a","age":1,"pet":' + '{"name":"x","friend":' * 20 + '{"name":"y"}' + "}" * 20 + "}"
    assert accepts(machine, deep)  # recursion through $ref
    tree = compile_schema({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}})
    assert accepts(tree, '{"kids": [{"kids": []}, {}]}') and not accepts(tree, '{"kids": [1]}')
    # Shared definitions in a chain of anyOf (2**60 paths) are walked once each, compiling and running.
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(60)}
    chain = compile_schema({"$defs": {**defs, "d60": {"type": "integer"}}, "$ref": "#/$defs/d0"})
    assert accepts(chain, "123") and not accepts(chain, '"x"')
    # An anyOf of many enums is one set of texts: one parse, not one per option.
    options = compile_schema({"anyOf": [{"enum": ["q" * 50 + str(i)]} for i in range(64)] + [{"type": "null"}]})
    assert len(options.feed(options.start, '"' + "q" * 40).alts) == 1
    assert accepts(options, '"' + "q" * 50 + '63"') and accepts(options, "null") and not accepts(options, '"q"')
    # A long enum and many properties: looked up by prefix, not scanned per character.
    many = compile_schema({"type": "object", "properties": {f"key{i}": {"enum": [f"v{j}" for j in range(1 + i % 50)]}
                                                            for i in range(20000)}})
    assert accepts(many, '{"key19999": "v49", "key7": "v0"}') and not accepts(many, '{"key19999": "v50"}')


def test_tokens_follow_the_schema_through_json_tokens():
    tokens = JsonTokens(texts=["[", '{"x":', "1", "}", "]", ",", '"s"', None], eos_ids=frozenset({9}))
    machine = compile_schema(ROOT_ARRAY)
    state = machine.start
    assert tokens.allows(state, 0) and not tokens.allows(state, 1) and not tokens.allows(state, 9)
    for token in (0, 1, 2, 3):
        state = tokens.after(state, token)
    assert not tokens.allows(state, 9) and tokens.allows(state, 4) and tokens.allows(state, 5)
    assert not tokens.allows(tokens.after(tokens.after(state, 5), 1), 6)  # "x" is a number
    assert not tokens.allows(state, 7) and tokens.after(state, 7) is ANY  # a text-less piece outside a string
    state = tokens.after(state, 4)
    assert tokens.allows(state, 9) and not tokens.allows(state, 5)


# ---------------------------------------------------------------------- through the engine

TOOL = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "days": {"type": "integer"}, "units": {"enum": ["C", "F"]}},
        "required": ["city", "days", "units"], "additionalProperties": False}


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_engine_output_follows_the_schema_and_drafting_changes_nothing(temperature):
    from engine import DEFAULT_MODEL, LLM, SamplingParams
    from fastcodellama.drafting import SpecConfig, build_proposer
    from tests.engine.helpers import assert_no_leaks

    engines = (LLM(DEFAULT_MODEL, num_kv_blocks=512, block_size=16),
               LLM(DEFAULT_MODEL, num_kv_blocks=512, block_size=16, proposer=build_proposer(SpecConfig(policy="fixed"))))
    machine = compile_schema(TOOL)
    params = SamplingParams(max_tokens=160, temperature=temperature, top_p=0.95, seed=5, n=3, json_object=True,
                            json_schema=machine)
    prompts = ["# the forecast request\nrequest = ", "def weather():\n    return ",
               'config = {"city": "Paris", "days": 3, "units": "C"}\nsame = ']
    plain, drafting = (e.generate(prompts, params) for e in engines)
    finished = 0
    for a, b in zip(plain, drafting):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        for c in a.outputs:
            assert machine.feed(machine.start, c.text) is not None, c.text
            if c.finish_reason == "stop":
                jsonschema.validate(json.loads(c.text), TOOL)
                finished += 1
    assert finished > 0
    assert sum(sum(c.spec.drafted.values()) for o in drafting for c in o.outputs) > 0
    for e in engines:
        assert_no_leaks(e.engine)


BOUNDED = [{"type": "integer", "minimum": 0, "maximum": 150}, {"type": "integer", "exclusiveMinimum": -3, "maximum": 7},
           {"type": "integer", "minimum": 37}, {"type": "integer", "maximum": -12},
           {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, {"type": "number", "minimum": -40.5,
                                                                              "maximum": 60},
           {"type": "number", "minimum": 0.1, "exclusiveMaximum": 0.25}, {"type": "number", "maximum": -2.5},
           {"type": "number", "maximum": -1}]


def number_text(rng: random.Random, schema: dict) -> str:
    """A JSON number without an exponent: at the schema's bounds, near them, and far from them."""
    integer = schema["type"] == "integer"
    bounds = [v for k, v in schema.items() if k != "type"]
    if rng.random() < 0.4:
        near = rng.choice(bounds) + rng.choice([0, 0, -1, 1] if integer else [0, 0, -0.01, 0.01, -0.125, 0.125])
        return json.dumps(round(near, 3)) if not integer else str(near)
    whole = str(rng.choice([0, 0, 1, 2, 3, 6, 7, 12, 37, 40, 60, 150, 151, 1000, rng.randrange(10**6)]))
    text = ("-" if rng.random() < 0.4 else "") + whole
    if not integer and rng.random() < 0.6:
        text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 4)))
    return text


def against_validator(machine, validator, samples) -> dict[bool, int]:
    """Each (text, value) of `samples`: the automaton takes the text exactly when jsonschema
    validates the value, and every prefix of a valid one; how many were valid and not."""
    seen = {True: 0, False: 0}
    for text, value in samples:
        valid = validator.is_valid(value)
        assert accepts(machine, text) == valid, (text, valid)
        seen[valid] += 1
        if valid:
            assert all(machine.feed(machine.start, text[:end]) is not None for end in range(1, len(text)))
    return seen


@pytest.mark.parametrize("index", range(len(BOUNDED)))
def test_bounds_are_the_validators(index):
    """Whole numbers and every prefix of the valid ones, set against jsonschema; and no prefix the
    automaton takes is a dead end: some digits (a point, a sign) still end it within the bounds."""
    schema = BOUNDED[index]
    machine, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
    rng = random.Random(index)
    texts = (number_text(rng, schema) for _ in range(800))
    seen = against_validator(machine, validator, ((text, json.loads(text)) for text in texts))
    assert seen[True] > 20 and seen[False] > 20
    no_dead_end(machine, "-0123456789.eE+", tuple("0123456789.-"), rng, steps=6, depth=8)


def no_dead_end(machine, alphabet: str, pieces: tuple[str, ...], rng: random.Random, steps: int, depth: int) -> None:
    """Texts written a character of `alphabet` at a time as the automaton allows: from every one,
    some `pieces` (at most `depth`) still finish the text."""
    for _ in range(300):
        state, text = machine.start, ""
        for _ in range(rng.randint(1, steps)):
            options = [ch for ch in alphabet if machine.feed(state, ch) is not None]
            if not options:
                break
            ch = rng.choice(options)
            state, text = machine.feed(state, ch), text + ch
        assert finishes(machine, state, pieces, depth), text


def finishes(machine, state, pieces: tuple[str, ...], depth: int) -> bool:
    if machine.complete(state):
        return True
    return depth > 0 and any(finishes(machine, after, pieces, depth - 1) for after in (
        machine.feed(state, piece) for piece in pieces) if after is not None)


@pytest.mark.parametrize("schema", [{"type": "string", "pattern": r"^[A-Z]{2}-\d{3}$"}, {"type": "string", "format": "date"},
                                    {"type": "string", "pattern": "^a\"?b$"}, {"type": "string", "maxLength": 2}])
def test_no_string_the_schema_takes_is_a_dead_end(schema):
    """Written a character at a time (escapes and quotes too), every prefix the automaton takes of
    a string with a pattern, a format or a length can still be closed."""
    no_dead_end(compile_schema(schema), 'AZab09-"\\nu', ("0", "1", "2", "3", "A", "a", "b", "-", '"', "\\n", '\\"'),
                random.Random(str(schema)), steps=14, depth=14)


def test_bounds_inside_objects_and_draft4s_exclusive_flags():
    machine = compile_schema({"type": "object", "properties": {"age": {"type": "integer", "minimum": 18}},
                              "required": ["age"]})
    assert accepts(machine, '{"age": 18}') and accepts(machine, '{"age":1234}') and not accepts(machine, '{"age": 17}')
    assert machine.feed(machine.start, '{"age": -') is None and machine.feed(machine.start, '{"age": 1e') is None
    draft4 = compile_schema({"type": "number", "minimum": 1, "exclusiveMinimum": True, "maximum": 2})
    assert not accepts(draft4, "1") and accepts(draft4, "1.5") and accepts(draft4, "2")
    tight = compile_schema({"type": "number", "minimum": 0.5, "exclusiveMinimum": 0.5})  # the tighter: exclusive
    assert not accepts(tight, "0.5") and accepts(tight, "0.51")


# ---------------------------------------------------------------------- property counts and multiples

COUNTED = [
    {"type": "object", "minProperties": 2, "maxProperties": 3},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
     "required": ["a"], "minProperties": 2, "maxProperties": 2, "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 3}, "b": {"type": "null"}},
     "required": ["a", "b"], "maxProperties": 3,
     "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}},
    {"type": "object", "required": ["x"], "maxProperties": 1},  # a required key that is not listed: any key else
    {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 5,
                                                                       "exclusiveMinimum": -12, "maximum": 40}},
                                "minProperties": 1, "additionalProperties": {"type": "boolean"}}, "maxItems": 3},
]
MULTIPLES = [{"type": "integer", "multipleOf": 7, "minimum": -50, "exclusiveMaximum": 50},
             {"type": "integer", "multipleOf": 4, "minimum": 10}, {"type": "integer", "multipleOf": 3, "maximum": -5},
             {"type": "integer", "multipleOf": 6}, {"type": "number", "multipleOf": 5, "exclusiveMinimum": -12.5,
                                                    "maximum": 100.25},
             {"type": "integer", "multipleOf": 1000, "minimum": -1000000, "maximum": 1000000},
             {"type": "number", "multipleOf": 2.0, "minimum": 0.5}, {"type": "integer", "multipleOf": 25, "minimum": 30,
                                                                     "maximum": 160}]
JSON_CHARACTERS = '{}[],:" -.+0123456789abcxeEtrufsln'


def walk(machine, alphabet: str, rng: random.Random, limit: int = 2000) -> str:
    """A text written a random allowed character at a time until it is complete (past a few
    characters, closing ones first where allowed, so that it ends): it never meets a dead end."""
    state, text = machine.start, ""
    while not (machine.complete(state) and rng.random() < 0.5):
        options = [ch for ch in alphabet if machine.feed(state, ch) is not None]
        if not options:
            assert machine.complete(state), text  # nothing may follow: the text must be able to end
            break
        if len(text) > 20:
            options = [ch for ch in options if ch in '}]"'] or [ch for ch in options if ch in ",:"] or options
        ch = rng.choice(options)
        state, text = machine.feed(state, ch), text + ch
        assert len(text) < limit, text
    return text


@pytest.mark.parametrize("index", range(len(COUNTED + MULTIPLES)))
def test_random_walks_write_what_jsonschema_validates(index):
    """Character by character, any allowed choice: every walk ends in a document the validator
    takes, so no prefix the automaton allows is a dead end."""
    schema = (COUNTED + MULTIPLES)[index]
    machine, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
    alphabet = JSON_CHARACTERS if schema in COUNTED else "-0123456789.eE+"
    rng = random.Random(str(schema))
    for _ in range(120):
        text = walk(machine, alphabet, rng)
        assert validator.is_valid(json.loads(text)), text


def multiple_text(rng: random.Random, schema: dict) -> str:
    """A multiple of the schema's multipleOf, or one off it; a number's sometimes with a point."""
    value = int(schema["multipleOf"]) * rng.randint(-40, 40) + rng.choice([0, 0, 0, 1, -1])
    point = rng.choice(["", "", ".0", ".00", ".5"]) if schema["type"] == "number" else ""
    text = str(value) + point
    return "-" + text if value == 0 and rng.random() < 0.5 else text  # -0 too


@pytest.mark.parametrize("index", range(len(MULTIPLES)))
def test_multiples_are_the_validators(index):
    """As test_bounds_are_the_validators, with multipleOf beside the bounds."""
    schema = MULTIPLES[index]
    machine, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
    rng = random.Random(index)
    texts = (multiple_text(rng, schema) if rng.random() < 0.6 else number_text(rng, schema) for _ in range(800))
    seen = against_validator(machine, validator, ((text, json.loads(text)) for text in texts))
    assert seen[True] > 10 and seen[False] > 20, seen
    no_dead_end(machine, "-0123456789.eE+", tuple("0123456789.-"), rng, steps=6, depth=8)


COUNTED_VALUES = {"a": [3, 5, 6, 10, -10, 45, -15, 2.5, "s"], "b": [None, "s", None], "c": [True, False, 7],
                  "x": [1, 9, 10, True, False], "y": [0, 3, True, "s"]}


def counted_value(rng: random.Random, schema: dict):
    """A value meant to follow one of COUNTED's schemas (keys mostly its own), often breaking a
    count or a multiple."""
    if rng.random() < 0.3:
        return [counted_value(rng, schema) for _ in range(rng.choice([0, 1, 2, 3, 4]))] if rng.random() < 0.5 else 3
    own = list(dict.fromkeys([*schema.get("properties", {}), *schema.get("required", [])]))
    names = own if own and rng.random() < 0.5 else list(COUNTED_VALUES)
    keys = rng.sample(names, min(len(names), rng.choice([0, 1, 2, 2, 2, 3, 3, 4, 5])))
    return {k: rng.choice(COUNTED_VALUES[k]) for k in keys}


@pytest.mark.parametrize("index", range(len(COUNTED)))
def test_property_counts_are_the_validators(index):
    schema = COUNTED[index]
    machine, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
    rng = random.Random(index)
    values = (counted_value(rng, schema) for _ in range(1500))
    samples = ((json.dumps(value, separators=rng.choice([None, (",", ":")])), value) for value in values)
    seen = against_validator(machine, validator, samples)
    assert seen[True] > 25 and seen[False] > 25, seen


def test_property_counts_steer_the_keys():
    machine = compile_schema({"type": "object", "properties": {"a": {}, "b": {}, "c": {}}, "required": ["c"],
                              "minProperties": 2, "maxProperties": 2, "additionalProperties": False})
    for broken in ('{"c":1}', '{"a":1,"b"', '{"a":1,"c":2,', '{"c":1,"a":2,"b"', "{}"):
        assert not accepts(machine, broken) and machine.feed(machine.start, broken) is None, broken
    assert accepts(machine, '{"a":1,"c":2}') and accepts(machine, '{"c":1,"b":2}')
    assert machine.feed(machine.start, '{"a":1,"') is not None and machine.feed(machine.start, '{"a":1,"b') is None
    free = compile_schema({"type": "object", "required": ["id"], "maxProperties": 2})
    assert free.in_text(free.feed(free.start, '{"x'))  # any key may come, while there is room for "id"
    state = free.feed(free.start, '{"x":1,"')
    assert not free.in_text(state) and free.feed(state, 'i') is not None and free.feed(state, 'x') is None
    assert accepts(free, '{"x":1,"id":2}') and not accepts(free, '{"x":1,"y":2}') and not accepts(free, '{"x":1}')


def test_multiples_steer_the_digits():
    machine = compile_schema({"type": "integer", "multipleOf": 5, "minimum": -12, "maximum": 12})
    for prefix, ok in (("-", True), ("-1", True), ("-2", False), ("1", True), ("13", False), ("-0", True),
                       ("00", False), ("2", False), ("10", True), ("105", False)):
        assert (machine.feed(machine.start, prefix) is not None) == ok, prefix
    assert [n for n in range(-20, 21) if accepts(machine, str(n))] == [-10, -5, 0, 5, 10]
    assert accepts(machine, "-0") and not accepts(machine, "1")
    big = compile_schema({"type": "integer", "multipleOf": 10 ** 20, "minimum": 10 ** 21})
    assert accepts(big, str(10 ** 40)) and not accepts(big, str(10 ** 40 + 1)) and not accepts(big, str(10 ** 20))
    assert big.feed(big.start, "-") is None and big.feed(big.start, str(10 ** 20 + 1)) is not None  # ... then zeros
    number = compile_schema({"type": "number", "multipleOf": 2, "maximum": 7})
    assert accepts(number, "4.0") and accepts(number, "-2.00") and accepts(number, "-0.0") and accepts(number, "6")
    assert number.feed(number.start, "4.5") is None and number.feed(number.start, "4e") is None
    assert number.feed(number.start, "8") is None and not accepts(number, "3.0")


def test_texts_that_break_counts_or_multiples_are_refused():
    cases = [(COUNTED[0], ['{"a":1}', "{}", '{"a":1,"b":2,"c":3,"d":4}']),
             (COUNTED[1], ['{"a":1}', '{"b":"s","c":true}', '{"a":1,"b":"s","c":true}']),
             (COUNTED[2], ['{"a":3,"b":null,"x":1,"y":2}', '{"a":4,"b":null}', '{"a":3,"b":null,"x":10}']),
             (COUNTED[3], ['{"y":1}', '{"x":1,"y":2}', "{}"]), (COUNTED[4], ["[{}]", '[{"a":-15}]', '[{"a":7}]']),
             (MULTIPLES[0], ["8", "-56", "56", "-1"]), (MULTIPLES[4], ["101", "-15", "7.5", "-0.5"]),
             (MULTIPLES[5], ["1001", "2000000", "-999"])]
    for schema, texts in cases:
        machine, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
        for text in texts:
            assert not accepts(machine, text) and not validator.is_valid(json.loads(text)), text
    # Valid, but written otherwise here: an integer without a point, a multiple without an exponent.
    assert not accepts(compile_schema(MULTIPLES[0]), "7.0") and not accepts(compile_schema(MULTIPLES[4]), "5e1")


def test_schemas_no_value_meets_are_refused():
    for schema, word in (({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"],
                           "maxProperties": 1}, "maxProperties 1 is below"),
                         ({"type": "object", "minProperties": 3, "maxProperties": 2}, "maxProperties 2 is below"),
                         ({"type": "object", "properties": {"a": {}}, "minProperties": 2}, "minProperties 2 is more"),
                         ({"type": "object", "properties": {"o": {"type": "object", "properties": {"a": {}},
                                                                  "additionalProperties": False, "minProperties": 2}}},
                          "#/properties/o: minProperties"),
                         ({"type": "object", "maxProperties": -1}, "maxProperties must be"),
                         ({"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 4}, "multipleOf"),
                         ({"type": "number", "multipleOf": 5, "exclusiveMinimum": 0, "exclusiveMaximum": 5},
                          "multipleOf"),
                         ({"type": "integer", "minimum": 5, "maximum": 3}, "no integer"),
                         ({"type": "number", "exclusiveMinimum": 1, "maximum": 1}, "no number"),
                         ({"type": "number", "multipleOf": 0.01}, "multipleOf"), ({"type": "integer", "multipleOf": 0},
                                                                                 "multipleOf"),
                         ({"type": "integer", "multipleOf": -3}, "multipleOf"),
                         ({"type": "integer", "multipleOf": True}, "multipleOf")):
        with pytest.raises(ValueError, match=word):
            compile_schema(schema)
    assert accepts(compile_schema({"type": "integer", "multipleOf": 5, "minimum": 5, "maximum": 5}), "5")
    assert accepts(compile_schema({"type": "object", "properties": {"a": {}}, "required": ["a"], "minProperties": 1,
                                   "maxProperties": 1, "additionalProperties": False}), '{"a": null}')


# ---------------------------------------------------------------------- schemas that accept no value

NEEDS_ITSELF = {"$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}},
                "$ref": "#/$defs/a"}
EMPTY = [({"anyOf": []}, "#: accepts no value \\(an empty anyOf"), ({"oneOf": []}, "#: accepts no value"),
         ({"type": []}, "empty type list"), ({"enum": []}, "empty enum"), (False, "#: accepts no value \\(false"),
         ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength 5 is above maxLength 2"),
         ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems 3 is above maxItems 1"),
         ({"type": "array", "items": False, "minItems": 1}, "minItems 1 is more than the 0 prefixItems"),
         ({"type": "array", "prefixItems": [{}, {}], "items": False, "minItems": 3}, "more than the 2 prefixItems"),
         ({"type": "object", "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 1}}},
          "#/properties/s: accepts no value"),  # contradictory keywords: refused even where optional
         # Propagated: a required property, a needed item, every option, accepts no value.
         ({"type": "object", "properties": {"x": {"anyOf": []}}, "required": ["x"]},
          "#/properties/x: accepts no value \\(an empty anyOf\\), and # needs one"),
         ({"type": "object", "properties": {"o": {"type": "object", "properties": {"y": False}, "required": ["y"]}},
           "required": ["o"]}, "#/properties/o/properties/y: accepts no value"),
         ({"type": "object", "required": ["y"], "additionalProperties": {"type": []}},
          "#/additionalProperties: accepts no value"),
         ({"type": "object", "properties": {"a": False, "b": {}}, "minProperties": 2, "additionalProperties": False},
          "minProperties 2: too few"),
         ({"type": "array", "items": {"enum": []}, "minItems": 1}, "#/items: accepts no value"),
         ({"type": "array", "prefixItems": [{}, False], "minItems": 2}, "#/prefixItems/1: accepts no value"),
         ({"type": "array", "prefixItems": [{}], "items": {"anyOf": []}, "minItems": 2}, "#/items: accepts no value"),
         ({"anyOf": [False, {"type": []}, {"type": "object", "properties": {"x": False}, "required": ["x"]}]},
          "#: accepts no value \\(none of its options"),
         ({"type": ["array"], "items": {"enum": []}, "minItems": 1}, "#: accepts no value \\(none of its options"),
         # A recursion needed at every level: no finite value, refused rather than walked forever.
         (NEEDS_ITSELF, "#/\\$defs/a/properties/x: accepts no value \\(\\$ref '#/\\$defs/a' needs itself"),
         ({"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]}, "needs itself"),
         ({"$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/b"}, "minItems": 1},
                     "b": {"anyOf": [{"$ref": "#/$defs/a"}, False]}}, "$ref": "#/$defs/b"},
          "#/\\$defs/b: accepts no value \\(none of its options")]


def test_schemas_that_accept_no_value_are_refused():
    """Refused by location and reason at compile time: the automaton would take whitespace alone,
    or a start that nothing finishes."""
    for schema, word in EMPTY:
        with pytest.raises(ValueError, match=word):
            compile_schema(schema)
    # Each definition needs the next and the last the first: seen at once, however long the ring.
    ring = {f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{(i + 1) % 3000}"}}, "required": ["x"]}
            for i in range(3000)}
    with pytest.raises(ValueError, match="needs itself"):
        compile_schema({"$defs": ring, "$ref": "#/$defs/d0"})


# Look-alikes that some value meets: what accepts nothing is left out where it is optional.
SATISFIABLE = [
    {"anyOf": [{"anyOf": []}, {"type": "integer", "minimum": 0, "maximum": 9}]},
    {"anyOf": [{"type": "object", "properties": {"x": False}, "required": ["x"]},  # starts with "{" too
               {"type": "object", "properties": {"a": {"type": "null"}}, "required": ["a"]}]},
    {"type": "object", "properties": {"x": False, "b": {"type": "boolean"}}},  # x: a key that may not come
    {"type": "object", "properties": {"x": {"anyOf": []}, "c": {"type": "null"}},
     "additionalProperties": {"type": "null"}},
    {"type": "object", "properties": {"a": {"type": "null"}}, "additionalProperties": {"type": []}},
    {"type": "object", "properties": {"a": {"type": "null"}, "b": False, "c": {"type": "null"}}, "minProperties": 2,
     "additionalProperties": False},
    {"type": "object", "properties": {"x": NEEDS_ITSELF, "a": {"type": "null"}}, "$defs": NEEDS_ITSELF["$defs"]},
    {"$defs": {"t": {"type": "object", "properties": {"n": {"type": "integer"}, "c": {"type": "array",
                                                                                 "items": {"$ref": "#/$defs/t"}}},
                     "required": ["n"], "additionalProperties": False}}, "$ref": "#/$defs/t"},  # a tree
    # b is reached first through a, which needs b: a walk that took b for empty there would be wrong.
    {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}, {"type": "null"}]},
               "b": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"],
                     "additionalProperties": False}}, "$ref": "#/$defs/a"},
    {"type": "array", "items": False}, {"type": "array", "prefixItems": [{"type": "null"}], "items": False},
    {"type": "array", "items": {"enum": []}},
    {"type": "array", "prefixItems": [{"type": "null"}, False, {}], "minItems": 1},
    {"type": "array", "items": {"anyOf": [NEEDS_ITSELF, {"type": "boolean"}]}, "$defs": NEEDS_ITSELF["$defs"]},
]


@pytest.mark.parametrize("index", range(len(SATISFIABLE)))
def test_look_alikes_that_accept_a_value_compile_without_dead_ends(index):
    """Every random walk through the automaton ends in a document the validator takes."""
    schema = SATISFIABLE[index]
    machine, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
    rng = random.Random(index)
    for _ in range(150):
        text = walk(machine, JSON_CHARACTERS, rng)
        assert validator.is_valid(json.loads(text)), text


def test_what_accepts_no_value_is_never_started():
    assert accepts(compile_schema(SATISFIABLE[1]), '{"a": null}')
    assert compile_schema(SATISFIABLE[1]).feed(compile_schema(SATISFIABLE[1]).start, '{"x"') is None
    optional = compile_schema(SATISFIABLE[2])
    assert optional.feed(optional.start, '{"x') is None and accepts(optional, '{"b": true}')
    barred = compile_schema(SATISFIABLE[3])  # any other key, but not x
    assert barred.feed(barred.start, '{"x"') is None and accepts(barred, '{"xy": null, "c": null}')
    assert not accepts(compile_schema(SATISFIABLE[4]), '{"z": null}')
    assert not accepts(compile_schema(SATISFIABLE[6]), '{"x": {}}') and accepts(compile_schema(SATISFIABLE[6]), "{}")
    tree = compile_schema(SATISFIABLE[7])
    assert accepts(tree, '{"n": 1, "c": [{"n": 2, "c": [{"n": 3}]}, {"n": 4, "c": []}]}')
    loop = compile_schema(SATISFIABLE[8])
    assert accepts(loop, '{"x": {"x": null}}') and accepts(loop, "null")
    assert accepts(compile_schema(SATISFIABLE[9]), "[]") and not accepts(compile_schema(SATISFIABLE[9]), "[1]")
    capped = compile_schema(SATISFIABLE[12])
    assert accepts(capped, "[null]") and capped.feed(capped.start, "[null,") is None


def test_an_enum_or_const_keeps_only_the_values_the_rest_of_its_schema_allows():
    """A type beside an enum, or a const beside one, narrows it: the automaton never writes a value
    that jsonschema refuses for the keyword next to it; where nothing is left, the schema is refused."""
    values = ["1", '"a"', "2", "1.0", "1.5", "true", "null", "3"]
    for schema in ({"type": "string", "enum": [1, "a"]}, {"enum": [1, 2], "const": 2},
                   {"type": "integer", "enum": [1.0, 1.5]}, {"type": "boolean", "enum": [1, True]},
                   {"type": ["null", "string"], "enum": [None, 3]}):
        machine = compile_schema(schema)
        written = [v for v in values if accepts(machine, v)]
        assert written and all(jsonschema.Draft202012Validator(schema).is_valid(json.loads(v)) for v in written)
    for schema in ({"type": "string", "enum": [1]}, {"enum": [1], "const": 2}):
        with pytest.raises(ValueError, match="accepts no value"):
            compile_schema(schema)
