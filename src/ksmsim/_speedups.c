/*
 * ksmsim._speedups: optional C versions of ksmsim's hottest pure-Python code.
 *
 * jhash2(data, initval) -> int
 *     Bob Jenkins' lookup2 hash over an array of 32-bit words, matching the
 *     jhash2() of Linux 2.6.33's include/linux/jhash.h, which mm/ksm.c uses
 *     as its page checksum.  The buffer is read as little-endian words and
 *     must be a whole number of words long.  Same results as
 *     ksmsim.kernel.jhash.jhash2_py.
 *
 * Written for ksmsim; plain C99 plus the CPython API, no other dependencies.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define KSMSIM_GOLDEN 0x9e3779b9u

/* One lookup2 mixing round over the three 32-bit registers. */
#define KSMSIM_MIX(a, b, c)                     \
    do {                                        \
        a -= b; a -= c; a ^= (c >> 13);         \
        b -= c; b -= a; b ^= (a << 8);          \
        c -= a; c -= b; c ^= (b >> 13);         \
        a -= b; a -= c; a ^= (c >> 12);         \
        b -= c; b -= a; b ^= (a << 16);         \
        c -= a; c -= b; c ^= (b >> 5);          \
        a -= b; a -= c; a ^= (c >> 3);          \
        b -= c; b -= a; b ^= (a << 10);         \
        c -= a; c -= b; c ^= (b >> 15);         \
    } while (0)

/* Byte-order independent little-endian load; compilers turn it into one move. */
static inline uint32_t
ksmsim_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
           ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint32_t
ksmsim_jhash2(const unsigned char *p, Py_ssize_t nwords, uint32_t initval)
{
    uint32_t a = KSMSIM_GOLDEN, b = KSMSIM_GOLDEN, c = initval;
    Py_ssize_t left = nwords;

    for (; left >= 3; left -= 3, p += 12) {
        a += ksmsim_le32(p);
        b += ksmsim_le32(p + 4);
        c += ksmsim_le32(p + 8);
        KSMSIM_MIX(a, b, c);
    }
    /* The byte length is folded into c before the 0..2 words left over. */
    c += (uint32_t)nwords * 4u;
    if (left == 2)
        b += ksmsim_le32(p + 4);
    if (left >= 1)
        a += ksmsim_le32(p);
    KSMSIM_MIX(a, b, c);
    return c;
}

PyDoc_STRVAR(jhash2_doc,
"jhash2(data, initval, /)\n"
"--\n"
"\n"
"Hash a bytes-like object, read as little-endian 32-bit words, with the\n"
"lookup2 jhash2() of Linux 2.6.33.  len(data) must be a multiple of 4.\n"
"initval is taken modulo 2**32.  Returns an int in [0, 2**32).");

static PyObject *
speedups_jhash2(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    unsigned long initval;
    uint32_t h;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "jhash2() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyLong_Check(args[1])) {
        PyErr_Format(PyExc_TypeError,
                     "jhash2() initval must be int, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    initval = PyLong_AsUnsignedLongMask(args[1]);
    if (initval == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len % 4 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "jhash2 needs a whole number of 32-bit words, got %zd bytes",
                     view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    h = ksmsim_jhash2((const unsigned char *)view.buf, view.len / 4,
                      (uint32_t)(initval & 0xffffffffUL));
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong((unsigned long)h);
}

static PyMethodDef speedups_methods[] = {
    {"jhash2", (PyCFunction)(void (*)(void))speedups_jhash2, METH_FASTCALL, jhash2_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot speedups_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ksmsim._speedups",
    .m_doc = "Optional C speed-ups for ksmsim (same results as the pure-Python code).",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
