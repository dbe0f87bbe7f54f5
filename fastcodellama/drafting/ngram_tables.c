/* Hash tables of n-gram keys for the copy-draft indexes: the fast path of
 * fastcodellama/ngram_tables.py's DictTables (its reference, tested against it). Built at first
 * use as a CPython extension by fastcodellama/ngram_tables.py.
 *
 * A table maps a 64-bit key to an int64 value >= 0 (open addressing, linear probing,
 * backward-shift deletion; a negative value marks an empty slot). `index` and `evict` walk a run
 * of ends of one text and roll the keys of its last m tokens exactly as ngram_tables.mix does. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MIX 0x9E3779B97F4A7C15ULL
#define MAX_MATCH 8
#define CAPSULE "fastcodellama.ngram_table"

/* A slot holds its key beside its value: a probe reads one cache line, not one in each of two arrays. */
typedef struct {
    uint64_t key;
    int64_t val;
} Slot;

typedef struct {
    Slot *slots;
    uint64_t mask;
    Py_ssize_t size;
} Table;

static inline uint64_t slot_of(const Table *t, uint64_t key) { return (key ^ (key >> 29)) & t->mask; }

static int table_alloc(Table *t, uint64_t capacity) {
    t->slots = PyMem_Malloc(capacity * sizeof(Slot));
    if (!t->slots) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t i = 0; i < capacity; i++) t->slots[i].val = -1;
    t->mask = capacity - 1;
    t->size = 0;
    return 0;
}

/* The slot of key, or the empty slot where it would go. */
static inline Slot *find(const Table *t, uint64_t key) {
    uint64_t i = slot_of(t, key);
    while (t->slots[i].val >= 0 && t->slots[i].key != key) i = (i + 1) & t->mask;
    return &t->slots[i];
}

static inline int64_t table_get(const Table *t, uint64_t key) { return find(t, key)->val; }

/* Sets key to val (the table has room); returns the value it replaced, -1 for none. */
static inline int64_t put(Table *t, uint64_t key, int64_t val) {
    Slot *s = find(t, key);
    int64_t old = s->val;
    if (old < 0) t->size++;
    s->key = key;
    s->val = val;
    return old;
}

static int grow(Table *t) {
    Table old = *t;
    if (table_alloc(t, (old.mask + 1) * 2) < 0) {
        *t = old;
        return -1;
    }
    for (uint64_t i = 0; i <= old.mask; i++)
        if (old.slots[i].val >= 0) put(t, old.slots[i].key, old.slots[i].val);
    PyMem_Free(old.slots);
    return 0;
}

static inline int room_for_one(Table *t) {
    return (uint64_t)(t->size + 1) * 2 > t->mask + 1 ? grow(t) : 0;
}

static inline int table_set(Table *t, uint64_t key, int64_t val) {
    if (room_for_one(t) < 0) return -1;
    put(t, key, val);
    return 0;
}

/* table_set that returns the value it replaced (-1: none, -2: out of memory), in one probe. */
static inline int64_t table_exchange(Table *t, uint64_t key, int64_t val) {
    return room_for_one(t) < 0 ? -2 : put(t, key, val);
}

/* Deletes key if it maps to val; later entries of its probe run shift back into the hole. */
static void table_del_if(Table *t, uint64_t key, int64_t val) {
    Slot *slots = t->slots;
    uint64_t i = find(t, key) - slots;
    if (slots[i].val != val) return;
    for (uint64_t j = (i + 1) & t->mask; slots[j].val >= 0; j = (j + 1) & t->mask) {
        uint64_t home = slot_of(t, slots[j].key);
        /* Entry j may move to i unless its home lies cyclically in (i, j]. */
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            slots[i] = slots[j];
            i = j;
        }
    }
    slots[i].val = -1;
    t->size--;
}

static void capsule_free(PyObject *capsule) {
    Table *t = PyCapsule_GetPointer(capsule, CAPSULE);
    if (t) {
        PyMem_Free(t->slots);
        PyMem_Free(t);
    }
}

static Table *as_table(PyObject *obj) { return PyCapsule_GetPointer(obj, CAPSULE); }

static PyObject *py_new(PyObject *self, PyObject *unused) {
    Table *t = PyMem_Malloc(sizeof(Table));
    if (!t) return PyErr_NoMemory();
    if (table_alloc(t, 16) < 0) {
        PyMem_Free(t);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(t, CAPSULE, capsule_free);
    if (!capsule) {
        PyMem_Free(t->slots);
        PyMem_Free(t);
    }
    return capsule;
}

static PyObject *py_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "get(table, key)");
    Table *t = as_table(args[0]);
    if (!t) return NULL;
    uint64_t key = PyLong_AsUnsignedLongLongMask(args[1]);
    if (key == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    int64_t v = table_get(t, key);
    if (v < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

static PyObject *py_size(PyObject *self, PyObject *capsule) {
    Table *t = as_table(capsule);
    return t ? PyLong_FromSsize_t(t->size) : NULL;
}

/* tables[m] for m in [n, mm] (a list indexed by m), or NULL where the list holds None. */
static int unpack_tables(PyObject *list, Py_ssize_t n, Py_ssize_t mm, Table **out) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) <= mm) {
        PyErr_SetString(PyExc_TypeError, "tables must be a list indexed by suffix length");
        return -1;
    }
    for (Py_ssize_t m = n; m <= mm; m++)
        if (!(out[m] = as_table(PyList_GET_ITEM(list, m)))) return -1;
    return 0;
}

typedef struct {
    PyObject *seq;
    PyObject **items;
    Py_ssize_t start, end, n, mm;
    int64_t tag;
} Run;

/* Parses (tables, tokens, start, end, n, max_match, tag, ...) and checks the run's bounds. */
static int parse_run(PyObject *const *args, Run *r, Table **tables) {
    r->start = PyLong_AsSsize_t(args[2]);
    r->end = PyLong_AsSsize_t(args[3]);
    r->n = PyLong_AsSsize_t(args[4]);
    r->mm = PyLong_AsSsize_t(args[5]);
    r->tag = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return -1;
    if (r->n < 1 || r->mm < r->n || r->mm > MAX_MATCH) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= n <= max_match <= 8");
        return -1;
    }
    if (unpack_tables(args[0], r->n, r->mm, tables) < 0) return -1;
    r->seq = PySequence_Fast(args[1], "tokens must be a list or tuple");
    if (!r->seq) return -1;
    if (r->start < 1) r->start = 1;
    if (r->end > PySequence_Fast_GET_SIZE(r->seq)) r->end = PySequence_Fast_GET_SIZE(r->seq);
    r->items = PySequence_Fast_ITEMS(r->seq);
    return 0;
}

/* keys[m] = key of items[e-m:e] for m in [1, min(mm, e)]; returns that count, or -1 on a bad
 * token (Python error set). */
static Py_ssize_t roll_keys(PyObject **items, Py_ssize_t e, Py_ssize_t mm, uint64_t *keys) {
    uint64_t key = 0;
    Py_ssize_t last = e < mm ? e : mm;
    for (Py_ssize_t m = 1; m <= last; m++) {
        long long tok = PyLong_AsLongLong(items[e - m]);
        if (tok == -1 && PyErr_Occurred()) return -1;
        key = (key ^ (uint64_t)(tok + 1)) * MIX;
        keys[m] = key;
    }
    return last;
}

/* The keys of every end of the run into tables (and an old value of another member into second). */
static int index_run(Table **tables, Table **second, long long member, const Run *r) {
    uint64_t keys[MAX_MATCH + 1];
    for (Py_ssize_t e = r->start; e < r->end; e++) {
        Py_ssize_t last = roll_keys(r->items, e, r->mm, keys);
        if (last < 0) return -1;
        for (Py_ssize_t m = r->n; m <= last; m++) {
            if (!second) {
                if (table_set(tables[m], keys[m], r->tag | e) < 0) return -1;
                continue;
            }
            int64_t old = table_exchange(tables[m], keys[m], r->tag | e);
            if (old == -2) return -1;
            if (old >= 0 && (old >> 32) != member && table_set(second[m], keys[m], old) < 0) return -1;
        }
    }
    return 0;
}

/* index(tables, tokens, start, end, n, max_match, tag, second, member): for every end e in
 * [start, end) and m in [n, min(max_match, e)], tables[m][key] = tag | e. With `second` (a list
 * like tables, or None) an old value of another member (old >> 32 != member) moves there first. */
static PyObject *py_index(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) return PyErr_Format(PyExc_TypeError, "index takes 9 arguments");
    Table *tables[MAX_MATCH + 1] = {0}, *second[MAX_MATCH + 1] = {0};
    Run r;
    if (parse_run(args, &r, tables) < 0) return NULL;
    int cross = args[7] != Py_None;
    long long member = PyLong_AsLongLong(args[8]);
    if ((cross && unpack_tables(args[7], r.n, r.mm, second) < 0) || PyErr_Occurred()) {
        Py_DECREF(r.seq);
        return NULL;
    }
    int ok = index_run(tables, cross ? second : NULL, member, &r) == 0;
    Py_DECREF(r.seq);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* index_runs(runs): index(*run) for each run in order, a run being the 9 arguments of index. */
static PyObject *py_index_runs(PyObject *self, PyObject *runs) {
    if (!PyList_Check(runs)) return PyErr_Format(PyExc_TypeError, "runs must be a list");
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(runs); i++) {
        PyObject *run = PyList_GET_ITEM(runs, i);
        if (!PyTuple_Check(run) || PyTuple_GET_SIZE(run) != 9) return PyErr_Format(PyExc_TypeError, "a run is a tuple of 9");
        PyObject *done = py_index(self, ((PyTupleObject *)run)->ob_item, 9);
        if (!done) return NULL;
        Py_DECREF(done);
    }
    Py_RETURN_NONE;
}

/* A cursor (a list of 2 ints)'s entry i, or -1 with an error set. */
static Py_ssize_t cursor_at(PyObject *cursor, Py_ssize_t i) {
    return PyLong_AsSsize_t(PyList_GET_ITEM(cursor, i));
}

static int cursor_set(PyObject *cursor, Py_ssize_t i, Py_ssize_t value) {
    PyObject *v = PyLong_FromSsize_t(value);
    if (!v) return -1;
    return PyList_SetItem(cursor, i, v);  /* steals v, drops the old value */
}

/* Indexes [cursor[i], end) of text into tables (and second, for the cross tables) and moves the
 * cursor to end. */
static int index_from(PyObject *text, PyObject *cursor, Py_ssize_t i, PyObject *maps, PyObject *second_maps,
                      long long member, int64_t tag, Py_ssize_t n, Py_ssize_t mm) {
    Py_ssize_t start = cursor_at(cursor, i), end = PyList_GET_SIZE(text);
    if (start < 0 && PyErr_Occurred()) return -1;
    if (end <= start) return 0;
    Table *tables[MAX_MATCH + 1] = {0}, *second[MAX_MATCH + 1] = {0};
    if (unpack_tables(maps, n, mm, tables) < 0) return -1;
    if (second_maps && unpack_tables(second_maps, n, mm, second) < 0) return -1;
    Run r = {text, PySequence_Fast_ITEMS(text), start < 1 ? 1 : start, end, n, mm, tag};
    if (index_run(tables, second_maps ? second : NULL, member, &r) < 0) return -1;
    return cursor_set(cursor, i, end);
}

/* index_members(members, n, max_match): for each running member of a group, what CopyProposer's
 * _index and GroupIndex.take_runs do in Python: its text (prompt + output so far) gains what its
 * output gained, its own keys are indexed from cursor[0] and, where its group has more than one
 * text, its keys in the cross tables from cursor[1]; both cursors move to the text's end. A
 * member is (output, text, prompt_len, cursor, own_maps, texts, top_maps, second_maps, member),
 * texts/top_maps/second_maps None for a group without siblings. In the order given (within a
 * group, the cross tables keep the latest end of the last member indexed). */
static PyObject *py_index_members(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "index_members takes 3 arguments");
    Py_ssize_t n = PyLong_AsSsize_t(args[1]), mm = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (n < 1 || mm < n || mm > MAX_MATCH) return PyErr_Format(PyExc_ValueError, "need 1 <= n <= max_match <= 8");
    PyObject *members = PySequence_Fast(args[0], "members must be iterable");
    if (!members) return NULL;
    PyObject **items = PySequence_Fast_ITEMS(members);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(members); i++) {
        PyObject *it = items[i];
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 9) {
            PyErr_SetString(PyExc_TypeError, "a member is a tuple of 9");
            goto fail;
        }
        PyObject *output = PyTuple_GET_ITEM(it, 0), *text = PyTuple_GET_ITEM(it, 1), *cursor = PyTuple_GET_ITEM(it, 3);
        PyObject *texts = PyTuple_GET_ITEM(it, 5);
        if (!PyList_Check(output) || !PyList_Check(text) || !PyList_Check(cursor) || PyList_GET_SIZE(cursor) != 2 ||
            (texts != Py_None && !PyDict_Check(texts))) {
            PyErr_SetString(PyExc_TypeError, "a member's output, text and cursor are lists (a cursor of 2), its texts a dict");
            goto fail;
        }
        Py_ssize_t prompt_len = PyLong_AsSsize_t(PyTuple_GET_ITEM(it, 2));
        long long member = PyLong_AsLongLong(PyTuple_GET_ITEM(it, 8));
        if (PyErr_Occurred()) goto fail;
        Py_ssize_t have = PyList_GET_SIZE(text) - prompt_len, total = PyList_GET_SIZE(output);
        if (have < 0) {
            PyErr_SetString(PyExc_ValueError, "a member's text is shorter than its prompt");
            goto fail;
        }
        for (Py_ssize_t j = have; j < total; j++)  /* PyList_Append takes its own reference */
            if (PyList_Append(text, PyList_GET_ITEM(output, j)) < 0) goto fail;
        if (index_from(text, cursor, 0, PyTuple_GET_ITEM(it, 4), NULL, -1, 0, n, mm) < 0) goto fail;
        if (texts != Py_None && PyDict_GET_SIZE(texts) > 1 &&
            index_from(text, cursor, 1, PyTuple_GET_ITEM(it, 6), PyTuple_GET_ITEM(it, 7), member,
                       (int64_t)member << 32, n, mm) < 0) goto fail;
    }
    Py_DECREF(members);
    Py_RETURN_NONE;
fail:
    Py_DECREF(members);
    return NULL;
}

/* evict(tables, tokens, start, end, n, max_match, tag): deletes every entry still equal to tag | e. */
static PyObject *py_evict(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) return PyErr_Format(PyExc_TypeError, "evict takes 7 arguments");
    Table *tables[MAX_MATCH + 1] = {0};
    Run r;
    if (parse_run(args, &r, tables) < 0) return NULL;
    uint64_t keys[MAX_MATCH + 1];
    for (Py_ssize_t e = r.start; e < r.end; e++) {
        Py_ssize_t last = roll_keys(r.items, e, r.mm, keys);
        if (last < 0) {
            Py_DECREF(r.seq);
            return NULL;
        }
        for (Py_ssize_t m = r.n; m <= last; m++) table_del_if(tables[m], keys[m], r.tag | e);
    }
    Py_DECREF(r.seq);
    Py_RETURN_NONE;
}

/* Keys of the last m tokens before `end`, m in [1, min(mm, end)]; returns that count or -1. */
static Py_ssize_t tail(PyObject *tokens, Py_ssize_t end, Py_ssize_t mm, uint64_t *keys) {
    PyObject *seq = PySequence_Fast(tokens, "tokens must be a list or tuple");
    if (!seq) return -1;
    if (end > PySequence_Fast_GET_SIZE(seq)) end = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t last = roll_keys(PySequence_Fast_ITEMS(seq), end, mm, keys);
    Py_DECREF(seq);
    return last;
}

/* longest(tables, tokens, end, n, max_match, second, member): the longest m in [n, max_match]
 * whose key (the last m tokens before `end`) is in tables, as (m, value), or None. With `second`
 * (cross-member tables) a value of `member` itself is replaced by second's. */
static PyObject *py_longest(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) return PyErr_Format(PyExc_TypeError, "longest takes 7 arguments");
    Py_ssize_t end = PyLong_AsSsize_t(args[2]), n = PyLong_AsSsize_t(args[3]), mm = PyLong_AsSsize_t(args[4]);
    long long member = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (n < 1 || mm < n || mm > MAX_MATCH) return PyErr_Format(PyExc_ValueError, "need 1 <= n <= max_match <= 8");
    Table *tables[MAX_MATCH + 1] = {0}, *second[MAX_MATCH + 1] = {0};
    int cross = args[5] != Py_None;
    if (unpack_tables(args[0], n, mm, tables) < 0 || (cross && unpack_tables(args[5], n, mm, second) < 0))
        return NULL;
    uint64_t keys[MAX_MATCH + 1];
    Py_ssize_t last = tail(args[1], end, mm, keys);
    if (last < 0) return NULL;
    for (Py_ssize_t m = last; m >= n; m--) {
        int64_t v = table_get(tables[m], keys[m]);
        if (cross && v >= 0 && (v >> 32) == member) v = table_get(second[m], keys[m]);
        if (v >= 0) return Py_BuildValue("nL", m, (long long)v);
    }
    Py_RETURN_NONE;
}

/* The longest m in [n, top] whose key is in maps (a list indexed by m; second/member as in
 * longest), its value in *val; 0 where none, -1 on error. Only the lengths tried are unpacked. */
static Py_ssize_t longest_in(PyObject *maps, PyObject *second, long long member, const uint64_t *keys,
                             Py_ssize_t n, Py_ssize_t top, int64_t *val) {
    for (Py_ssize_t m = top; m >= n; m--) {
        Table *t = as_table(PyList_GET_ITEM(maps, m));
        if (!t) return -1;
        int64_t v = table_get(t, keys[m]);
        if (second != NULL && v >= 0 && (v >> 32) == member) {
            Table *s = as_table(PyList_GET_ITEM(second, m));
            if (!s) return -1;
            v = table_get(s, keys[m]);
        }
        if (v >= 0) {
            *val = v;
            return m;
        }
    }
    return 0;
}

/* How far back a match of m tokens before text[e] goes: m, or more (up to cap) when m >= mm. */
static Py_ssize_t reach(PyObject **toks, Py_ssize_t L, PyObject *text, Py_ssize_t e, Py_ssize_t m,
                        Py_ssize_t mm, Py_ssize_t cap) {
    if (m < mm) return m;
    PyObject **their = PySequence_Fast_ITEMS(text);
    Py_ssize_t limit = cap < L ? cap : L;
    if (e < limit) limit = e;
    while (m < limit) {
        PyObject *a = toks[L - 1 - m], *b = their[e - 1 - m];
        if (a != b && PyLong_AsLongLong(a) != PyLong_AsLongLong(b)) break;
        m++;
    }
    return m;
}

typedef struct { Py_ssize_t m; PyObject *text; Py_ssize_t end; } Found;

/* A packed value (text id << 32 | end) of m matched tokens as the text it points into, from `texts`
 * (a dict by id, borrowed); -1 with an error set where the text is gone. */
static int text_at(PyObject *texts, int64_t v, Py_ssize_t m, Found *out) {
    PyObject *key = PyLong_FromLongLong(v >> 32);
    PyObject *text = key ? PyDict_GetItemWithError(texts, key) : NULL;
    Py_XDECREF(key);
    if (!text) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "a copy's text is gone");
        return -1;
    }
    *out = (Found){m, text, (Py_ssize_t)(v & 0xFFFFFFFFLL)};
    return 0;
}

/* Whether obj is None or a list of tables indexed by suffix length up to mm (else an error set). */
static int maps_ok(PyObject *obj, Py_ssize_t mm) {
    if (obj == Py_None || (PyList_Check(obj) && PyList_GET_SIZE(obj) > mm)) return 1;
    PyErr_SetString(PyExc_TypeError, "tables must be a list indexed by suffix length");
    return 0;
}

/* best_copies(items, n, max_match, cap, adaptive, handicap, pool_maps, pool_texts, names): for each
 * item, CopyProposer._best_hit's copy as (source, text, end, match length), the source named by
 * names[0..3] (prediction, self, sibling, other); None where no source has one, or the item is
 * None. An item is (toks, pred_maps, pred_tokens, own_maps, prompt_maps, top_maps, second_maps,
 * member, texts), None for a source it lacks; every table is synced by the caller. `handicap`: the
 * matched tokens "other" needs beyond the others (adaptive); pool_maps/pool_texts: the pool of
 * other requests' finished texts, or None. */
static PyObject *py_best_copies(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) return PyErr_Format(PyExc_TypeError, "best_copies takes 9 arguments");
    PyObject *items = args[0], *pool_maps = args[6], *pool_texts = args[7], *names = args[8];
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) != 4)
        return PyErr_Format(PyExc_TypeError, "names must be a tuple of 4");
    Py_ssize_t n = PyLong_AsSsize_t(args[1]), mm = PyLong_AsSsize_t(args[2]), cap = PyLong_AsSsize_t(args[3]);
    int adaptive = PyObject_IsTrue(args[4]);
    Py_ssize_t handicap = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (!PyList_Check(items)) return PyErr_Format(PyExc_TypeError, "items must be a list");
    if (n < 1 || mm < n || mm > MAX_MATCH) return PyErr_Format(PyExc_ValueError, "need 1 <= n <= max_match <= 8");
    if (!maps_ok(pool_maps, mm)) return NULL;
    if (pool_maps != Py_None && !PyDict_Check(pool_texts)) return PyErr_Format(PyExc_TypeError, "pool texts: a dict");
    Py_ssize_t count = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(count);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *it = PyList_GET_ITEM(items, i);
        if (it == Py_None) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(out, i, Py_None);
            continue;
        }
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 9) {
            PyErr_SetString(PyExc_TypeError, "an item is a tuple of 9");
            goto fail;
        }
        PyObject *toks_obj = PyTuple_GET_ITEM(it, 0);
        if (!PyList_Check(toks_obj)) {
            PyErr_SetString(PyExc_TypeError, "an item's tokens are a list");
            goto fail;
        }
        PyObject **toks = PySequence_Fast_ITEMS(toks_obj);
        Py_ssize_t L = PyList_GET_SIZE(toks_obj);
        uint64_t keys[MAX_MATCH + 1];
        Py_ssize_t top = roll_keys(toks, L, mm, keys);
        if (top < 0) goto fail;
        Found found[4] = {{0}};
        int64_t v;
        Py_ssize_t m;
        PyObject *pred = PyTuple_GET_ITEM(it, 1), *own = PyTuple_GET_ITEM(it, 3), *prompt = PyTuple_GET_ITEM(it, 4);
        PyObject *tables_top = PyTuple_GET_ITEM(it, 5), *texts = PyTuple_GET_ITEM(it, 8);
        if (!maps_ok(pred, mm) || !maps_ok(own, mm) || !maps_ok(prompt, mm) || !maps_ok(tables_top, mm)) goto fail;
        if (tables_top != Py_None && (PyTuple_GET_ITEM(it, 6) == Py_None || !maps_ok(PyTuple_GET_ITEM(it, 6), mm) ||
                                      !PyDict_Check(texts))) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "siblings need second tables and a dict of texts");
            goto fail;
        }
        if (pred != Py_None && !PyList_Check(PyTuple_GET_ITEM(it, 2)) && !PyTuple_Check(PyTuple_GET_ITEM(it, 2))) {
            PyErr_SetString(PyExc_TypeError, "a prediction's tokens are a list or tuple");
            goto fail;
        }
        long long member = PyLong_AsLongLong(PyTuple_GET_ITEM(it, 7));
        if (member == -1 && PyErr_Occurred()) goto fail;
        if (pred != Py_None) {
            if ((m = longest_in(pred, NULL, 0, keys, n, top, &v)) < 0) goto fail;
            if (m) found[0] = (Found){m, PyTuple_GET_ITEM(it, 2), (Py_ssize_t)v};
        }
        if (own != Py_None) {
            if ((m = longest_in(own, NULL, 0, keys, n, top, &v)) < 0) goto fail;
            if (m) found[1] = (Found){m, toks_obj, (Py_ssize_t)v};
            if (prompt != Py_None && m < mm) {  /* the shared prompt's keys, at equal m after the output's */
                Py_ssize_t pm = longest_in(prompt, NULL, 0, keys, n, top, &v);
                if (pm < 0) goto fail;
                if (pm > m) found[1] = (Found){pm, toks_obj, (Py_ssize_t)v};
            }
        }
        if (tables_top != Py_None) {
            if ((m = longest_in(tables_top, PyTuple_GET_ITEM(it, 6), member, keys, n, top, &v)) < 0) goto fail;
            if (m && text_at(texts, v, m, &found[2]) < 0) goto fail;
        }
        if (pool_maps != Py_None) {
            if ((m = longest_in(pool_maps, NULL, 0, keys, n, top, &v)) < 0) goto fail;
            if (m && text_at(pool_texts, v, m, &found[3]) < 0) goto fail;
        }
        /* In order of trust: the first of equals wins. */
        int best = -1;
        Py_ssize_t best_m = 0, best_rank = 0;
        for (int s = 0; s < 4; s++) {
            if (!found[s].m) continue;
            if (!PyList_Check(found[s].text) && !PyTuple_Check(found[s].text)) {
                PyErr_SetString(PyExc_TypeError, "a text is a list or tuple");
                goto fail;
            }
            Py_ssize_t r = adaptive ? reach(toks, L, found[s].text, found[s].end, found[s].m, mm, cap) : found[s].m;
            if (PyErr_Occurred()) goto fail;
            Py_ssize_t rank = adaptive ? r - (s == 3 ? handicap : 0) : r;
            if (best < 0 || rank > best_rank) {
                best = s;
                best_m = r;
                best_rank = rank;
            }
        }
        if (best < 0) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(out, i, Py_None);
            continue;
        }
        if (!adaptive) best_m = reach(toks, L, found[best].text, found[best].end, best_m, mm, cap);
        if (PyErr_Occurred()) goto fail;
        PyObject *hit = Py_BuildValue("OOnn", PyTuple_GET_ITEM(names, best), found[best].text, found[best].end, best_m);
        if (!hit) goto fail;
        PyList_SET_ITEM(out, i, hit);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"longest", (PyCFunction)(void (*)(void))py_longest, METH_FASTCALL, "See ngram_tables.DictTables.longest."},
    {"best_copies", (PyCFunction)(void (*)(void))py_best_copies, METH_FASTCALL,
     "See CopyProposer._best_hit: one call for a whole search."},
    {"new", py_new, METH_NOARGS, "An empty table."},
    {"get", (PyCFunction)(void (*)(void))py_get, METH_FASTCALL, "get(table, key): the value, or None."},
    {"size", py_size, METH_O, "size(table): the number of entries."},
    {"index", (PyCFunction)(void (*)(void))py_index, METH_FASTCALL, "See ngram_tables.DictTables.index."},
    {"evict", (PyCFunction)(void (*)(void))py_evict, METH_FASTCALL, "See ngram_tables.DictTables.evict."},
    {"index_runs", py_index_runs, METH_O, "index(*run) for each run of a list, in order."},
    {"index_members", (PyCFunction)(void (*)(void))py_index_members, METH_FASTCALL,
     "CopyProposer._index and GroupIndex.take_runs for every running member, in one call."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ngram_tables", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ngram_tables(void) { return PyModule_Create(&module); }
