/* The host-call fast path: `glob.match` answered in C, without entering Python, where the answer
 * needs no compiled glob.
 *
 * Why C: a host call through the Python callback costs ~4-5 us of trampoline, GIL and argument
 * reading (benchmarks/README.md, "host-call overhead") against ~1 us in the glob itself, and a
 * route table calls `glob.match` once per rule: api_authz makes 48 calls per evaluation, 44 of
 * them refused by the pattern's literal prefix alone. No library offers a wasmtime host function
 * that reads OPA's value structs; this file is that function, and nothing more.
 *
 * `glob_callback` is installed as the guest's `opa_builtin3` import. For the `glob.match` builtin
 * (its id in this module is in `env`), when the operands are plain, it answers:
 *   - a pattern with no wildcard: equal text -> true, else false;
 *   - a pattern whose literal text before its first `*` or `?` is not a prefix of the value -> false.
 * Plain operands: pattern and value are strings, the pattern is ASCII without `[ ] { } \` (so it is
 * always a valid glob and its literal prefix is exactly its text up to the first `*`/`?`), and the
 * delimiters are null or an array of one-character ASCII strings (which the builtin accepts).
 * Anything else, and every other builtin of arity 3, goes to the Python callback (`fallback`) with
 * the same arguments: the answers and errors are the Python builtin's, only some come sooner.
 * The bytes of an ASCII prefix compare like its characters: a UTF-8 sequence or an invalid byte
 * is never equal to an ASCII byte.
 *
 * Memory: wasmtime's own `wasmtime_memory_data` / `_data_size` (their addresses are given in
 * `env`, from the library wasmtime-py loaded) are asked at each call, so every struct read is
 * bounds-checked against the memory's current size. No Python object is touched: this runs
 * without the GIL, on whichever thread the guest runs. */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef void *(*host_callback)(void *env, void *caller, uint8_t *slots, size_t nslots);
typedef uint8_t *(*memory_data_fn)(const void *context, const void *memory);
typedef size_t (*memory_size_fn)(const void *context, const void *memory);

enum { SLOT = 16 };                    /* sizeof(wasmtime_val_raw_t) */
enum { OPA_NULL = 1, OPA_STRING = 4, OPA_ARRAY = 5, OPA_STRING_INTERNED = 8 };
enum { MAX_DELIMITERS = 64 };

/* Filled by bridge/opawasm/hostfast.py (its ctypes Structure must match field for field). */
struct env {
    host_callback fallback;
    memory_data_fn memory_data;
    memory_size_fn memory_size;
    void *context;                     /* the store's wasmtime_context_t */
    uint8_t memory[32];                /* the guest's wasmtime_memory_t, opaque (24 bytes today) */
    int32_t glob_id;                   /* glob.match's builtin id in this module; -1: none */
    uint32_t true_value, false_value;  /* the library's interned booleans; 0: unknown yet */
    uint64_t answered, passed;         /* calls answered here, calls handed to Python */
};

static uint32_t u32_at(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The bytes of the string value at `v` (opa_string_t: type, free, len@4, ptr@8), or 0. */
static int string_at(const uint8_t *mem, size_t size, uint32_t v, const uint8_t **text, uint32_t *len) {
    if (v == 0 || (size_t)v + 12 > size || (mem[v] != OPA_STRING && mem[v] != OPA_STRING_INTERNED))
        return 0;
    uint32_t n = u32_at(mem + v + 4), ptr = u32_at(mem + v + 8);
    if (n && (ptr == 0 || (size_t)ptr + n > size))
        return 0;
    *text = mem + ptr;
    *len = n;
    return 1;
}

/* null, or an array (opa_array_t: type, elems@4, len@8; elems: {index, value}) of one-character
 * ASCII strings. */
static int plain_delimiters(const uint8_t *mem, size_t size, uint32_t v) {
    if (v == 0 || (size_t)v + 12 > size)
        return 0;
    if (mem[v] == OPA_NULL)
        return 1;
    if (mem[v] != OPA_ARRAY)
        return 0;
    uint32_t elems = u32_at(mem + v + 4), n = u32_at(mem + v + 8);
    if (n > MAX_DELIMITERS || (n && (elems == 0 || (size_t)elems + 8 * (size_t)n > size)))
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *text;
        uint32_t len;
        if (!string_at(mem, size, u32_at(mem + elems + 8 * i + 4), &text, &len) || len != 1 || text[0] >= 0x80)
            return 0;
    }
    return 1;
}

/* The answer's value address, or 0 when it takes the compiled glob (Python). */
static uint32_t glob_answer(const struct env *e, const uint8_t *slots) {
    const uint8_t *mem = e->memory_data(e->context, e->memory);
    size_t size = e->memory_size(e->context, e->memory);
    const uint8_t *pattern, *value;
    uint32_t plen, vlen;
    if (!string_at(mem, size, u32_at(slots + 2 * SLOT), &pattern, &plen) ||
        !string_at(mem, size, u32_at(slots + 4 * SLOT), &value, &vlen) ||
        !plain_delimiters(mem, size, u32_at(slots + 3 * SLOT)))
        return 0;
    uint32_t literal = plen;           /* the text before the first wildcard */
    for (uint32_t i = 0; i < plen; i++) {
        uint8_t c = pattern[i];
        if (c >= 0x80 || c == '[' || c == ']' || c == '{' || c == '}' || c == '\\')
            return 0;
        if ((c == '*' || c == '?') && literal == plen)
            literal = i;
    }
    if (literal == plen)
        return plen == vlen && memcmp(pattern, value, plen) == 0 ? e->true_value : e->false_value;
    if (literal > vlen || memcmp(pattern, value, literal) != 0)
        return e->false_value;
    return 0;
}

/* wasmtime_func_unchecked_callback_t: slot 0 holds the builtin id (and takes the result), slot 1
 * the context, slots 2-4 the operands' value addresses. */
static void *glob_callback(void *env, void *caller, uint8_t *slots, size_t nslots) {
    struct env *e = env;
    if (nslots >= 5 && e->true_value && e->false_value && (int32_t)u32_at(slots) == e->glob_id) {
        uint32_t answer = glob_answer(e, slots);
        if (answer) {
            memcpy(slots, &answer, 4);
            e->answered++;
            return NULL;
        }
    }
    e->passed++;
    return e->fallback(env, caller, slots, nslots);
}

static PyObject *callback_address(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromVoidPtr((void *)&glob_callback);
}

static PyObject *env_size(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromSize_t(sizeof(struct env));
}

static PyMethodDef methods[] = {
    {"callback_address", callback_address, METH_NOARGS, "The address of the opa_builtin3 host callback."},
    {"env_size", env_size, METH_NOARGS, "sizeof(struct env), for the Python side's layout check."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hostfast", "glob.match answered in C where it can be.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hostfast(void) { return PyModule_Create(&module); }
