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

typedef struct {
    uint64_t *keys;
    int64_t *vals;
    uint64_t mask;
    Py_ssize_t size;
} Table;

static inline uint64_t slot_of(const Table *t, uint64_t key) { return (key ^ (key >> 29)) & t->mask; }

static int table_alloc(Table *t, uint64_t capacity) {
    t->keys = PyMem_Malloc(capacity * sizeof(uint64_t));
    t->vals = PyMem_Malloc(capacity * sizeof(int64_t));
    if (!t->keys || !t->vals) {
        PyMem_Free(t->keys);
        PyMem_Free(t->vals);
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t i = 0; i < capacity; i++) t->vals[i] = -1;
    t->mask = capacity - 1;
    t->size = 0;
    return 0;
}

static inline int64_t table_get(const Table *t, uint64_t key) {
    for (uint64_t i = slot_of(t, key);; i = (i + 1) & t->mask) {
        if (t->vals[i] < 0) return -1;
        if (t->keys[i] == key) return t->vals[i];
    }
}

static inline void put(Table *t, uint64_t key, int64_t val) {
    uint64_t i = slot_of(t, key);
    while (t->vals[i] >= 0 && t->keys[i] != key) i = (i + 1) & t->mask;
    if (t->vals[i] < 0) t->size++;
    t->keys[i] = key;
    t->vals[i] = val;
}

static int grow(Table *t) {
    Table old = *t;
    if (table_alloc(t, (old.mask + 1) * 2) < 0) {
        *t = old;
        return -1;
    }
    for (uint64_t i = 0; i <= old.mask; i++)
        if (old.vals[i] >= 0) put(t, old.keys[i], old.vals[i]);
    PyMem_Free(old.keys);
    PyMem_Free(old.vals);
    return 0;
}

static inline int table_set(Table *t, uint64_t key, int64_t val) {
    if ((uint64_t)(t->size + 1) * 2 > t->mask + 1 && grow(t) < 0) return -1;
    put(t, key, val);
    return 0;
}

/* Deletes key if it maps to val; later entries of its probe run shift back into the hole. */
static void table_del_if(Table *t, uint64_t key, int64_t val) {
    uint64_t i = slot_of(t, key);
    while (t->vals[i] >= 0 && t->keys[i] != key) i = (i + 1) & t->mask;
    if (t->vals[i] != val) return;
    for (uint64_t j = (i + 1) & t->mask; t->vals[j] >= 0; j = (j + 1) & t->mask) {
        uint64_t home = slot_of(t, t->keys[j]);
        /* Entry j may move to i unless its home lies cyclically in (i, j]. */
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->keys[i] = t->keys[j];
            t->vals[i] = t->vals[j];
            i = j;
        }
    }
    t->vals[i] = -1;
    t->size--;
}

static void capsule_free(PyObject *capsule) {
    Table *t = PyCapsule_GetPointer(capsule, CAPSULE);
    if (t) {
        PyMem_Free(t->keys);
        PyMem_Free(t->vals);
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
        PyMem_Free(t->keys);
        PyMem_Free(t->vals);
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
    uint64_t keys[MAX_MATCH + 1];
    for (Py_ssize_t e = r.start; e < r.end; e++) {
        Py_ssize_t last = roll_keys(r.items, e, r.mm, keys);
        if (last < 0) goto fail;
        for (Py_ssize_t m = r.n; m <= last; m++) {
            if (cross) {
                int64_t old = table_get(tables[m], keys[m]);
                if (old >= 0 && (old >> 32) != member && table_set(second[m], keys[m], old) < 0) goto fail;
            }
            if (table_set(tables[m], keys[m], r.tag | e) < 0) goto fail;
        }
    }
    Py_DECREF(r.seq);
    Py_RETURN_NONE;
fail:
    Py_DECREF(r.seq);
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

static PyMethodDef methods[] = {
    {"longest", (PyCFunction)(void (*)(void))py_longest, METH_FASTCALL, "See ngram_tables.DictTables.longest."},
    {"new", py_new, METH_NOARGS, "An empty table."},
    {"get", (PyCFunction)(void (*)(void))py_get, METH_FASTCALL, "get(table, key): the value, or None."},
    {"size", py_size, METH_O, "size(table): the number of entries."},
    {"index", (PyCFunction)(void (*)(void))py_index, METH_FASTCALL, "See ngram_tables.DictTables.index."},
    {"evict", (PyCFunction)(void (*)(void))py_evict, METH_FASTCALL, "See ngram_tables.DictTables.evict."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ngram_tables", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ngram_tables(void) { return PyModule_Create(&module); }
