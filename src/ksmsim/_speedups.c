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
 * tree_setup(...), unstable_skip(node, data), stable_skip(node, data, pinned)
 *     The tree-walk shortcuts of ksmsim.kernel.ksm_shortcuts: walk down a KSM
 *     red-black tree past the nodes whose per-node step would provably only
 *     compare contents and descend, and stop at the first node that needs the
 *     exact step.  Same results as unstable_skip_py and stable_skip_py there;
 *     see that module for why each is exact.
 *
 * rb_setup(...), rb_insert_color(node, root)
 *     lib/rbtree.c's insert rebalancing on ksmsim.kernel.rbtree's nodes, as
 *     the pure-Python rb_insert_color there.
 * rb_erase(node, root)
 *     lib/rbtree.c's erase on the same nodes, as the pure-Python rb_erase there.
 *
 * scan_setup(...), scan_ptes(ksm, mm_slot, table, idx, address, stop, smart[, allow])
 *     The pte loop of ksmd's VMA loop over one pte table, with smart scan's
 *     skipping, as Ksm._scan_ptes in ksm.py; with allow >= 0 (visit_setup(),
 *     shortcut first_visit) new items are allocated here, and up to allow
 *     pages whose checksum changed are taken through their whole ksmd step.
 *
 * merge_setup(...), merge_fused(ksm, rmap_item, page, kpage)
 *     Ksm.merge_with_ksm_page_fused() (shortcut fused_merge).
 *
 * free_scanned(page, ...)
 *     The put_page() that frees a frame at the end of its ksmd step, when the
 *     machine's free hook has nothing to note (shortcut fused_free).
 *
 * insert_fused(ksm, tree_rmap_item, rmap_item, kpage)
 *     Ksm.insert_merged_fused(): the new stable node of two pages merged from
 *     the unstable tree, and both items on it (shortcut fused_insert).
 *
 * PageText(head, filler, size=4096)
 *     Page contents held as a head and a filler byte, standing for (and
 *     behaving as) head + bytes([filler]) * (size - len(head)).
 *
 * PageBase(pfn)
 *     The fields of a page frame in C, the base of ksmsim.kernel.page.Page
 *     when the extension is built (same attributes as the pure-Python base).
 *
 * page_run_setup(page_type, new_table), write_page_run(mm, vma, address, count, source, index)
 *     Runs of whole-page user writes (a fill, a background writer) as
 *     ksmsim.kernel.memory_shortcuts.write_page_run_py does them.
 *
 * Written for ksmsim; plain C99 plus the CPython API, no other dependencies.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <stdint.h>
#include <limits.h>

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



/* ---------------------------------------------------------------------------
 * PageText: page contents held as a head and a filler byte.
 *
 * PageText(head, filler, size=4096) stands for the bytes
 * head + bytes([filler]) * (size - len(head)) and behaves as those bytes do
 * where the model uses page contents: ==, <, ... against bytes and other
 * PageTexts, hash (equal to the bytes' hash), len, indexing and slicing
 * (slices are bytes), bytes(), the buffer protocol (the bytes are built
 * while a buffer is exported, and freed after), and every other method of
 * bytes (startswith, hex, ...: on the bytes, built for the call).  A unique page of the
 * scenario format costs some 80 bytes instead of 4 KiB.
 * ------------------------------------------------------------------------- */

typedef struct {
    PyObject_VAR_HEAD               /* ob_size: the length of the head */
    char *buf;                      /* the bytes, while a buffer is exported */
    PyObject *csum_fn;              /* checksum(): the function of the cached value */
    PyObject *csum;                 /* checksum(): its value */
    int size;                       /* the length of the bytes */
    unsigned short exports;
    unsigned char filler;
    char head[1];
} PageTextObject;

static PyTypeObject PageText_Type;

#define PT_HLEN(o) Py_SIZE(o)

static inline unsigned char
pt_at(PageTextObject *o, Py_ssize_t i)
{
    return i < PT_HLEN(o) ? (unsigned char)o->head[i] : o->filler;
}

static PyObject *
pagetext_make(PyTypeObject *type, const char *head, Py_ssize_t hlen, unsigned char filler,
              Py_ssize_t size)
{
    PageTextObject *o;
    if (hlen > size) {
        PyErr_SetString(PyExc_ValueError, "PageText: the head is longer than the page");
        return NULL;
    }
    if (size > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "PageText: size out of range");
        return NULL;
    }
    o = (PageTextObject *)type->tp_alloc(type, hlen + 1);
    if (o == NULL)
        return NULL;
    Py_SET_SIZE(o, hlen);
    memcpy(o->head, head, (size_t)hlen);
    o->head[hlen] = 0;
    o->csum_fn = NULL;
    o->csum = NULL;
    o->size = (int)size;
    o->buf = NULL;
    o->exports = 0;
    o->filler = filler;
    return (PyObject *)o;
}

static PyObject *
pagetext_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"head", "filler", "size", NULL};
    Py_buffer head;
    int filler;
    Py_ssize_t size = 4096;
    PyObject *o;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*i|n:PageText", kwlist, &head, &filler, &size))
        return NULL;
    if (filler < 0 || filler > 255) {
        PyBuffer_Release(&head);
        PyErr_SetString(PyExc_ValueError, "PageText: the filler is a byte (0-255)");
        return NULL;
    }
    o = pagetext_make(type, (const char *)head.buf, head.len, (unsigned char)filler, size);
    PyBuffer_Release(&head);
    return o;
}

static void
pagetext_fill(PageTextObject *o, char *out, Py_ssize_t start, Py_ssize_t stop)
{
    Py_ssize_t hlen = PT_HLEN(o), i = start;
    if (i < hlen) {
        Py_ssize_t n = (stop < hlen ? stop : hlen) - i;
        memcpy(out, o->head + i, (size_t)n);
        out += n;
        i += n;
    }
    if (i < stop)
        memset(out, o->filler, (size_t)(stop - i));
}

static PyObject *
pagetext_bytes(PageTextObject *o, PyObject *unused)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, o->size);
    (void)unused;
    if (b == NULL)
        return NULL;
    pagetext_fill(o, PyBytes_AS_STRING(b), 0, o->size);
    return b;
}

static void
pagetext_dealloc(PageTextObject *o)
{
    Py_XDECREF(o->csum_fn);
    Py_XDECREF(o->csum);
    if (o->buf != NULL)
        PyMem_Free(o->buf);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static Py_ssize_t
pagetext_length(PageTextObject *o)
{
    return (Py_ssize_t)o->size;
}

static Py_hash_t
pagetext_hash(PageTextObject *o)
{
    Py_hash_t h;
    PyObject *b = pagetext_bytes(o, NULL);
    if (b == NULL)
        return -1;
    h = PyObject_Hash(b);
    Py_DECREF(b);
    return h;
}

static PyObject *
pagetext_subscript(PageTextObject *o, PyObject *item)
{
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += o->size;
        if (i < 0 || i >= o->size) {
            PyErr_SetString(PyExc_IndexError, "index out of range");
            return NULL;
        }
        return PyLong_FromLong((long)pt_at(o, i));
    }
    if (PySlice_Check(item)) {
        Py_ssize_t start, stop, step, n, k, i;
        PyObject *b;
        char *out;
        if (PySlice_Unpack(item, &start, &stop, &step) < 0)
            return NULL;
        n = PySlice_AdjustIndices(o->size, &start, &stop, step);
        b = PyBytes_FromStringAndSize(NULL, n);
        if (b == NULL)
            return NULL;
        out = PyBytes_AS_STRING(b);
        if (step == 1) {
            if (n > 0)
                pagetext_fill(o, out, start, stop);
        } else {
            for (k = 0, i = start; k < n; k++, i += step)
                out[k] = (char)pt_at(o, i);
        }
        return b;
    }
    PyErr_Format(PyExc_TypeError, "PageText indices must be integers or slices, not %.200s",
                 Py_TYPE(item)->tp_name);
    return NULL;
}

/* Compare a PageText with raw bytes lexicographically: <0, 0 or >0. */
static int
pagetext_cmp_raw(PageTextObject *a, const unsigned char *b, Py_ssize_t lb)
{
    Py_ssize_t hlen = PT_HLEN(a), n = a->size < lb ? a->size : lb, m, i;
    int c;
    m = hlen < n ? hlen : n;
    c = memcmp(a->head, b, (size_t)m);
    if (c)
        return c;
    for (i = m; i < n; i++) {
        if (b[i] != a->filler)
            return a->filler < b[i] ? -1 : 1;
    }
    return a->size == lb ? 0 : (a->size < lb ? -1 : 1);
}

/* Compare two PageTexts lexicographically: <0, 0 or >0. */
static int
pagetext_cmp_pt(PageTextObject *a, PageTextObject *b)
{
    Py_ssize_t ha = PT_HLEN(a), hb = PT_HLEN(b);
    Py_ssize_t n = a->size < b->size ? a->size : b->size, i, lo, hi;
    int c;
    lo = ha < hb ? ha : hb;
    hi = ha > hb ? ha : hb;
    if (lo > n)
        lo = n;
    if (hi > n)
        hi = n;
    c = memcmp(a->head, b->head, (size_t)lo);
    if (c)
        return c;
    for (i = lo; i < hi; i++) {
        unsigned char x = pt_at(a, i), y = pt_at(b, i);
        if (x != y)
            return x < y ? -1 : 1;
    }
    if (hi < n && a->filler != b->filler)
        return a->filler < b->filler ? -1 : 1;
    return a->size == b->size ? 0 : (a->size < b->size ? -1 : 1);
}

#define PageText_Check(o) PyObject_TypeCheck(o, &PageText_Type)

static PyObject *
pagetext_richcompare(PyObject *a, PyObject *b, int op)
{
    int c;
    if (!PageText_Check(a)) {
        /* Reflected: compare b with a and swap the operator. */
        PyObject *t = a;
        static const int swapped[] = {Py_GT, Py_GE, Py_EQ, Py_NE, Py_LT, Py_LE};
        a = b;
        b = t;
        op = swapped[op];
    }
    if (PageText_Check(b))
        c = pagetext_cmp_pt((PageTextObject *)a, (PageTextObject *)b);
    else if (PyBytes_Check(b))
        c = pagetext_cmp_raw((PageTextObject *)a, (const unsigned char *)PyBytes_AS_STRING(b),
                             PyBytes_GET_SIZE(b));
    else
        Py_RETURN_NOTIMPLEMENTED;
    Py_RETURN_RICHCOMPARE(c, 0, op);
}

static int
pagetext_getbuffer(PageTextObject *o, Py_buffer *view, int flags)
{
    if (o->buf == NULL) {
        o->buf = PyMem_Malloc(o->size > 0 ? (size_t)o->size : 1);
        if (o->buf == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        pagetext_fill(o, o->buf, 0, o->size);
    }
    if (o->exports == USHRT_MAX) {
        PyErr_SetString(PyExc_BufferError, "PageText: too many buffers exported");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)o, o->buf, o->size, 1, flags) < 0) {
        if (o->exports == 0) {
            PyMem_Free(o->buf);
            o->buf = NULL;
        }
        return -1;
    }
    o->exports++;
    return 0;
}

static void
pagetext_releasebuffer(PageTextObject *o, Py_buffer *view)
{
    (void)view;
    if (--o->exports == 0) {
        PyMem_Free(o->buf);
        o->buf = NULL;
    }
}

static PyObject *
pagetext_repr(PageTextObject *o)
{
    PyObject *head = PyBytes_FromStringAndSize(o->head, PT_HLEN(o)), *r;
    if (head == NULL)
        return NULL;
    r = PyUnicode_FromFormat("PageText(%R, %d, %d)", head, (int)o->filler, o->size);
    Py_DECREF(head);
    return r;
}

static PyObject *
pagetext_reduce(PageTextObject *o, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("(O(y#ii))", (PyObject *)Py_TYPE(o), o->head, PT_HLEN(o),
                         (int)o->filler, o->size);
}

static PyObject *
pagetext_get_head(PageTextObject *o, void *closure)
{
    (void)closure;
    return PyBytes_FromStringAndSize(o->head, PT_HLEN(o));
}

static PyObject *
pagetext_get_filler(PageTextObject *o, void *closure)
{
    (void)closure;
    return PyLong_FromLong((long)o->filler);
}

static PyObject *
pagetext_get_size(PageTextObject *o, void *closure)
{
    (void)closure;
    return PyLong_FromLong((long)o->size);
}

/* Any other attribute is the bytes' own (startswith, hex, decode, ...), on the bytes built
 * for the occasion. */
static PyObject *
pagetext_getattro(PyObject *o, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr(o, name), *b;
    if (r != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return r;
    PyErr_Clear();
    b = pagetext_bytes((PageTextObject *)o, NULL);
    if (b == NULL)
        return NULL;
    r = PyObject_GetAttr(b, name);
    Py_DECREF(b);
    return r;
}

static PyGetSetDef pagetext_getset[] = {
    {"head", (getter)pagetext_get_head, NULL, "the bytes before the filler", NULL},
    {"filler", (getter)pagetext_get_filler, NULL, "the byte that fills the rest", NULL},
    {"size", (getter)pagetext_get_size, NULL, "the length of the bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* checksum(fn): fn(self), computed once per function and kept (the last function's value). */
static PyObject *
pagetext_checksum(PageTextObject *o, PyObject *fn)
{
    PyObject *v;
    if (o->csum_fn == fn && o->csum != NULL) {
        Py_INCREF(o->csum);
        return o->csum;
    }
    v = PyObject_CallOneArg(fn, (PyObject *)o);
    if (v == NULL)
        return NULL;
    Py_INCREF(fn);
    Py_XSETREF(o->csum_fn, fn);
    Py_INCREF(v);
    Py_XSETREF(o->csum, v);
    return v;
}

static PyMethodDef pagetext_methods[] = {
    {"__bytes__", (PyCFunction)pagetext_bytes, METH_NOARGS, "Return the bytes."},
    {"checksum", (PyCFunction)pagetext_checksum, METH_O,
     "checksum(fn): fn(self), computed once and kept for the same fn."},
    {"__reduce__", (PyCFunction)pagetext_reduce, METH_NOARGS, "Pickle support."},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods pagetext_as_mapping = {
    (lenfunc)pagetext_length,
    (binaryfunc)pagetext_subscript,
    NULL,
};

static PySequenceMethods pagetext_as_sequence = {
    .sq_length = (lenfunc)pagetext_length,
};

static PyBufferProcs pagetext_as_buffer = {
    (getbufferproc)pagetext_getbuffer,
    (releasebufferproc)pagetext_releasebuffer,
};

PyDoc_STRVAR(pagetext_doc,
"PageText(head, filler, size=4096)\n"
"--\n"
"\n"
"The bytes head + bytes([filler]) * (size - len(head)), held as the head and\n"
"the filler; compares, hashes, indexes, slices and exports a buffer as those\n"
"bytes do.");

static PyTypeObject PageText_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ksmsim._speedups.PageText",
    .tp_basicsize = offsetof(PageTextObject, head),
    .tp_itemsize = 1,
    .tp_dealloc = (destructor)pagetext_dealloc,
    .tp_repr = (reprfunc)pagetext_repr,
    .tp_as_sequence = &pagetext_as_sequence,
    .tp_as_mapping = &pagetext_as_mapping,
    .tp_hash = (hashfunc)pagetext_hash,
    .tp_getattro = pagetext_getattro,
    .tp_as_buffer = &pagetext_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = pagetext_doc,
    .tp_richcompare = pagetext_richcompare,
    .tp_methods = pagetext_methods,
    .tp_getset = pagetext_getset,
    .tp_new = pagetext_new,
};


/* ---------------------------------------------------------------------------
 * PageBase: the fields of a page frame (ksmsim.kernel.page.Page) in C.
 *
 * The same attributes as the pure-Python base in page.py.  The frame number,
 * the index and private are held as C integers, so that a frame needs no int
 * objects of its own for them, and the object is 112 bytes, not 128;
 * the fields the hot paths read and write are object slots, which the
 * interpreter's attribute caches handle as fast as __slots__.
 * ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *count;
    PyObject *mapcount;
    PyObject *mapping_flags;
    PyObject *flags;
    PyObject *csum;
    PyObject *mapping;
    PyObject *data;
    PyObject *csum_of;
    Py_ssize_t index;
    unsigned int pfn;           /* 16 TiB of frames */
    unsigned int private_;      /* a swap slot */
} PageBaseObject;

static int
pagebase_init(PageBaseObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pfn", NULL};
    Py_ssize_t pfn;
    PyObject *zero;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:Page", kwlist, &pfn))
        return -1;
    if (pfn < 0 || pfn > (Py_ssize_t)UINT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Page: pfn out of range");
        return -1;
    }
    zero = PyLong_FromLong(0);
    if (zero == NULL)
        return -1;
    self->pfn = (unsigned int)pfn;
    self->index = 0;
    self->private_ = 0;
    Py_INCREF(zero);
    Py_XSETREF(self->count, zero);
    Py_INCREF(zero);
    Py_XSETREF(self->mapcount, zero);
    Py_INCREF(zero);
    Py_XSETREF(self->mapping_flags, zero);
    Py_INCREF(zero);
    Py_XSETREF(self->flags, zero);
    Py_XSETREF(self->csum, zero);
    Py_INCREF(Py_None);
    Py_XSETREF(self->mapping, Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(self->data, Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(self->csum_of, Py_None);
    return 0;
}

static int
pagebase_traverse(PageBaseObject *self, visitproc visit, void *arg)
{
    /* A static type: a heap subclass's traverse visits the type itself. */
    Py_VISIT(self->count);
    Py_VISIT(self->mapcount);
    Py_VISIT(self->mapping_flags);
    Py_VISIT(self->flags);
    Py_VISIT(self->csum);
    Py_VISIT(self->mapping);
    Py_VISIT(self->data);
    Py_VISIT(self->csum_of);
    return 0;
}

static int
pagebase_clear(PageBaseObject *self)
{
    Py_CLEAR(self->count);
    Py_CLEAR(self->mapcount);
    Py_CLEAR(self->mapping_flags);
    Py_CLEAR(self->flags);
    Py_CLEAR(self->csum);
    Py_CLEAR(self->mapping);
    Py_CLEAR(self->data);
    Py_CLEAR(self->csum_of);
    return 0;
}

static void
pagebase_dealloc(PageBaseObject *self)
{
    /* A heap subclass's dealloc (subtype_dealloc) drops the reference to its type. */
    PyObject_GC_UnTrack(self);
    pagebase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef pagebase_members[] = {
    {"count", T_OBJECT_EX, offsetof(PageBaseObject, count), 0, "page_count()"},
    {"mapcount", T_OBJECT_EX, offsetof(PageBaseObject, mapcount), 0, "page_mapcount()"},
    {"mapping_flags", T_OBJECT_EX, offsetof(PageBaseObject, mapping_flags), 0,
     "the low bits of page->mapping"},
    {"flags", T_OBJECT_EX, offsetof(PageBaseObject, flags), 0, "page flags"},
    {"csum", T_OBJECT_EX, offsetof(PageBaseObject, csum), 0, "cached checksum of csum_of"},
    {"mapping", T_OBJECT_EX, offsetof(PageBaseObject, mapping), 0, "page->mapping"},
    {"data", T_OBJECT_EX, offsetof(PageBaseObject, data), 0, "the contents"},
    {"csum_of", T_OBJECT_EX, offsetof(PageBaseObject, csum_of), 0,
     "the contents object csum was computed for"},
    {"index", T_PYSSIZET, offsetof(PageBaseObject, index), 0, "page->index"},
    {"pfn", T_UINT, offsetof(PageBaseObject, pfn), 0, "the frame number"},
    {"private", T_UINT, offsetof(PageBaseObject, private_), 0, "page->private"},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(pagebase_doc,
"PageBase(pfn)\n"
"--\n"
"\n"
"The fields of a page frame, held in C (the base of ksmsim.kernel.page.Page).");

static PyTypeObject PageBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ksmsim._speedups.PageBase",
    .tp_basicsize = sizeof(PageBaseObject),
    .tp_dealloc = (destructor)pagebase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = pagebase_doc,
    .tp_traverse = (traverseproc)pagebase_traverse,
    .tp_clear = (inquiry)pagebase_clear,
    .tp_members = pagebase_members,
    .tp_init = (initproc)pagebase_init,
    .tp_new = PyType_GenericNew,
};

/* ===========================================================================
 * count_ksm_frames: the KSM frames among the allocated ones (Machine.memory_stats)
 * ------------------------------------------------------------------------- */

PyDoc_STRVAR(count_ksm_frames_doc,
"count_ksm_frames(mem_map, start, stop, ksm_mapping_flags, /) -> int\n"
"--\n"
"\n"
"Count the frames of mem_map[start:stop] that are allocated (count > 0) KSM pages\n"
"(mapping_flags equal to ksm_mapping_flags); None entries are skipped.  The frames\n"
"must be PageBase objects (TypeError otherwise: the pure-Python twin counts them).");

static PyObject *
speedups_count_ksm_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *map, *want;
    Py_ssize_t start, stop, i, n = 0;
    (void)module;
    if (nargs != 4 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "count_ksm_frames(list, start, stop, flags)");
        return NULL;
    }
    map = args[0];
    start = PyLong_AsSsize_t(args[1]);
    stop = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    want = args[3];
    if (!PyLong_CheckExact(want)) {
        PyErr_SetString(PyExc_TypeError, "count_ksm_frames: flags must be an int");
        return NULL;
    }
    if (start < 0)
        start = 0;
    if (stop > PyList_GET_SIZE(map))
        stop = PyList_GET_SIZE(map);
    for (i = start; i < stop; i++) {
        PyObject *o = PyList_GET_ITEM(map, i);
        PageBaseObject *p;
        int eq;
        if (o == Py_None)
            continue;
        if (!PyObject_TypeCheck(o, &PageBase_Type)) {
            PyErr_SetString(PyExc_TypeError, "count_ksm_frames: a frame that is not a PageBase");
            return NULL;
        }
        p = (PageBaseObject *)o;
        if (p->mapping_flags == NULL || p->count == NULL)
            continue;
        /* Small ints are shared objects: identity settles most frames without a compare. */
        eq = p->mapping_flags == want ? 1 : PyObject_RichCompareBool(p->mapping_flags, want, Py_EQ);
        if (eq < 0)
            return NULL;
        if (!eq)
            continue;
        if (PyLong_CheckExact(p->count)) {
            int overflow;
            long c = PyLong_AsLongAndOverflow(p->count, &overflow);
            if (c == -1 && PyErr_Occurred())
                return NULL;
            n += overflow > 0 || (overflow == 0 && c > 0);
        } else {
            PyObject *zero = PyLong_FromLong(0);
            if (zero == NULL)
                return NULL;
            eq = PyObject_RichCompareBool(p->count, zero, Py_GT);
            Py_DECREF(zero);
            if (eq < 0)
                return NULL;
            n += eq;
        }
    }
    return PyLong_FromSsize_t(n);
}

/* ===========================================================================
 * write_page_run: runs of whole-page user writes (fill_batch, memory_shortcuts)
 *
 * page_run_setup(page_type, new_table) -> bool
 *     Tell write_page_run the frame class (a subclass of PageBase adding no
 *     fields) and the pte-table constructor; False when frames do not use
 *     PageBase (the pure-Python twin runs then).
 *
 * write_page_run(mm, vma, address, count, source, index) -> int
 *     ksmsim.kernel.memory_shortcuts.write_page_run_py, step for step: write
 *     the pages a PageSource generates to a run of pages of one writable area,
 *     taking the never-touched and the mapped-writable cases as
 *     do_anonymous_page() and the write would, and stop at the first page in
 *     neither; return how many pages were written.
 * ======================================================================== */

#define RUN_PAGE_SHIFT 12
#define RUN_PAGE_SIZE 4096
#define RUN_PTRS_PER_PTE 512
#define RUN_PAGE_PRESENT 0x1ULL
#define RUN_PAGE_RW 0x2ULL
#define RUN_PAGE_DIRTY 0x4ULL
#define RUN_PAGE_ACCESSED 0x8ULL
#define RUN_PAGE_SPECIAL 0x10ULL
#define RUN_PG_UPTODATE (1L << 2)
#define RUN_PG_LRU (1L << 4)
#define RUN_PG_ACTIVE (1L << 5)
#define RUN_PG_SWAPBACKED (1L << 7)
#define RUN_MAPPING_ANON 1

static PyTypeObject *run_page_type = NULL;
static PyObject *run_new_table = NULL;
/* Attribute names, interned once by page_run_setup(). */
static PyObject *run_s_pgd, *run_s_machine, *run_s_zone, *run_s_mem_map, *run_s_free, *run_s_lru, *run_s_active, *run_s_reuse_order, *run_s_anon_vma, *run_s_nr_free, *run_s_fresh, *run_s_present_pages, *run_s_vm_start, *run_s_vm_pgoff, *run_s_map_generation, *run_s_nr_anon_pages, *run_s_anon_rss;

PyDoc_STRVAR(page_run_setup_doc,
"page_run_setup(page_type, new_table, /)\n"
"--\n"
"\n"
"Tell write_page_run the frame class and the pte-table constructor; return whether\n"
"the frames use PageBase (else write_page_run refuses to run).");

static PyObject *
speedups_page_run_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyTypeObject *type;
    (void)module;
    if (nargs != 2 || !PyType_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "page_run_setup(page_type, new_table)");
        return NULL;
    }
    type = (PyTypeObject *)args[0];
    if (run_s_pgd == NULL && (run_s_pgd = PyUnicode_InternFromString("pgd")) == NULL)
        return NULL;
    if (run_s_machine == NULL && (run_s_machine = PyUnicode_InternFromString("machine")) == NULL)
        return NULL;
    if (run_s_zone == NULL && (run_s_zone = PyUnicode_InternFromString("zone")) == NULL)
        return NULL;
    if (run_s_mem_map == NULL && (run_s_mem_map = PyUnicode_InternFromString("mem_map")) == NULL)
        return NULL;
    if (run_s_free == NULL && (run_s_free = PyUnicode_InternFromString("_free")) == NULL)
        return NULL;
    if (run_s_lru == NULL && (run_s_lru = PyUnicode_InternFromString("lru")) == NULL)
        return NULL;
    if (run_s_active == NULL && (run_s_active = PyUnicode_InternFromString("active")) == NULL)
        return NULL;
    if (run_s_reuse_order == NULL && (run_s_reuse_order = PyUnicode_InternFromString("reuse_order")) == NULL)
        return NULL;
    if (run_s_anon_vma == NULL && (run_s_anon_vma = PyUnicode_InternFromString("anon_vma")) == NULL)
        return NULL;
    if (run_s_nr_free == NULL && (run_s_nr_free = PyUnicode_InternFromString("nr_free")) == NULL)
        return NULL;
    if (run_s_fresh == NULL && (run_s_fresh = PyUnicode_InternFromString("_fresh")) == NULL)
        return NULL;
    if (run_s_present_pages == NULL && (run_s_present_pages = PyUnicode_InternFromString("present_pages")) == NULL)
        return NULL;
    if (run_s_vm_start == NULL && (run_s_vm_start = PyUnicode_InternFromString("vm_start")) == NULL)
        return NULL;
    if (run_s_vm_pgoff == NULL && (run_s_vm_pgoff = PyUnicode_InternFromString("vm_pgoff")) == NULL)
        return NULL;
    if (run_s_map_generation == NULL && (run_s_map_generation = PyUnicode_InternFromString("map_generation")) == NULL)
        return NULL;
    if (run_s_nr_anon_pages == NULL && (run_s_nr_anon_pages = PyUnicode_InternFromString("nr_anon_pages")) == NULL)
        return NULL;
    if (run_s_anon_rss == NULL && (run_s_anon_rss = PyUnicode_InternFromString("anon_rss")) == NULL)
        return NULL;
    if (!PyType_IsSubtype(type, &PageBase_Type) ||
        type->tp_basicsize != PageBase_Type.tp_basicsize || type->tp_dictoffset != 0)
        Py_RETURN_FALSE;
    Py_INCREF(type);
    Py_XSETREF(run_page_type, type);
    Py_INCREF(args[1]);
    Py_XSETREF(run_new_table, args[1]);
    Py_RETURN_TRUE;
}

/* Read an integer attribute as a C long long (-1 with an error set on failure). */
static long long
run_get_ll(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    long long x;
    if (v == NULL)
        return -1;
    x = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return x;
}

/* Add delta to an integer attribute (0, or -1 with an error set). */
static int
run_add_ll(PyObject *obj, PyObject *name, long long delta)
{
    long long x;
    PyObject *v;
    int rc;
    if (delta == 0)
        return 0;
    x = run_get_ll(obj, name);
    if (x == -1 && PyErr_Occurred())
        return -1;
    v = PyLong_FromLongLong(x + delta);
    if (v == NULL)
        return -1;
    rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Set an int attribute to a value (0, or -1 with an error set). */
static int
run_set_ll(PyObject *obj, PyObject *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    int rc;
    if (v == NULL)
        return -1;
    rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* A PageText of head + "%d|" % i and filler (a new reference), or NULL: with an error set on
 * failure, without one where the head would be longer than a page. */
static PyObject *
run_numbered(PyObject *head, long long filler, long long i)
{
    char buf[RUN_PAGE_SIZE + 32], digits[24];
    Py_ssize_t hlen = PyBytes_GET_SIZE(head), n = 0;
    unsigned long long u = (unsigned long long)i;
    if (hlen > RUN_PAGE_SIZE)
        return NULL;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (hlen + n + 1 > RUN_PAGE_SIZE)
        return NULL;
    memcpy(buf, PyBytes_AS_STRING(head), (size_t)hlen);
    for (Py_ssize_t k = 0; k < n; k++)
        buf[hlen + k] = digits[n - 1 - k];
    buf[hlen + n] = '|';
    return pagetext_make(&PageText_Type, buf, hlen + n + 1, (unsigned char)filler, RUN_PAGE_SIZE);
}

/* The contents the source gives page i (a new reference), or NULL: with an error set on
 * failure, without one where the source gives none (memory_shortcuts.source_page). */
static PyObject *
run_source_page(long kind, PyObject *obj, long long modulus, PyObject *head, long long filler,
                long long i)
{
    long long r;
    PyObject *item;
    if (kind == 0) {
        Py_INCREF(obj);
        return obj;
    }
    if (i < 0)
        return NULL;
    if (kind == 1)
        return run_numbered(head, filler, i);
    r = i % modulus;
    while (PyList_GET_SIZE(obj) <= r) {  /* grown with no gaps, as source_page() grows it */
        PyObject *text = run_numbered(head, filler, PyList_GET_SIZE(obj));
        int rc;
        if (text == NULL)
            return NULL;
        rc = PyList_Append(obj, text);
        Py_DECREF(text);
        if (rc < 0)
            return NULL;
    }
    item = PyList_GET_ITEM(obj, r);
    Py_INCREF(item);
    return item;
}

/* What an allocation needs from the machine, read at the first never-touched page. */
typedef struct {
    int loaded;
    PyObject *machine, *zone, *mem_map, *free, *lru_active, *anon_vma;
    long long nr_free, fresh, present, vm_start, vm_pgoff;
    int hot;
    long long allocated, fresh_used;
} run_alloc_t;

static int
run_alloc_load(run_alloc_t *a, PyObject *mm, PyObject *vma)
{
    PyObject *lru = NULL, *order = NULL;
    a->loaded = 1;
    if (!(a->machine = PyObject_GetAttr(mm, run_s_machine)) ||
        !(a->zone = PyObject_GetAttr(a->machine, run_s_zone)) ||
        !(a->mem_map = PyObject_GetAttr(a->zone, run_s_mem_map)) ||
        !(a->free = PyObject_GetAttr(a->zone, run_s_free)) ||
        !(lru = PyObject_GetAttr(a->machine, run_s_lru)) ||
        !(a->lru_active = PyObject_GetAttr(lru, run_s_active)) ||
        !(order = PyObject_GetAttr(a->zone, run_s_reuse_order)) ||
        !(a->anon_vma = PyObject_GetAttr(vma, run_s_anon_vma))) {
        Py_XDECREF(lru);
        Py_XDECREF(order);
        return -1;
    }
    Py_DECREF(lru);
    a->hot = PyUnicode_Check(order) && PyUnicode_CompareWithASCIIString(order, "hot") == 0;
    Py_DECREF(order);
    if (!PyList_Check(a->mem_map) || !PyDict_Check(a->lru_active)) {
        PyErr_SetString(PyExc_TypeError, "write_page_run: mem_map is a list, lru.active a dict");
        return -1;
    }
    a->nr_free = run_get_ll(a->zone, run_s_nr_free);
    a->fresh = run_get_ll(a->zone, run_s_fresh);
    a->present = run_get_ll(a->zone, run_s_present_pages);
    a->vm_start = run_get_ll(vma, run_s_vm_start);
    a->vm_pgoff = run_get_ll(vma, run_s_vm_pgoff);
    return PyErr_Occurred() ? -1 : 0;
}

/* A frame with count 1, as Zone.alloc_page() hands it out (a new reference), or NULL with an
 * error set.  The zone's counters are kept in *a and written back by run_alloc_flush(). */
static PageBaseObject *
run_alloc_page(run_alloc_t *a)
{
    PageBaseObject *p;
    PyObject *one;
    Py_ssize_t nfree = PyObject_Size(a->free);
    if (nfree < 0)
        return NULL;
    if (nfree > 0) {
        p = (PageBaseObject *)PyObject_CallMethod(a->free, a->hot ? "pop" : "popleft", NULL);
        if (p == NULL)
            return NULL;
        if (!PyObject_TypeCheck((PyObject *)p, run_page_type)) {
            Py_DECREF(p);
            PyErr_SetString(PyExc_TypeError, "write_page_run: a foreign frame on the free list");
            return NULL;
        }
    } else {
        long long pfn = a->fresh;
        PyObject *cur;
        if (pfn > a->present || pfn >= PyList_GET_SIZE(a->mem_map)) {
            PyErr_SetString(PyExc_AssertionError, "write_page_run: no frame although nr_free");
            return NULL;
        }
        cur = PyList_GET_ITEM(a->mem_map, pfn);
        if (cur != Py_None) {  /* pfn_to_page(): a frame made earlier */
            if (!PyObject_TypeCheck(cur, run_page_type)) {
                PyErr_SetString(PyExc_TypeError, "write_page_run: a foreign frame in mem_map");
                return NULL;
            }
            Py_INCREF(cur);
            p = (PageBaseObject *)cur;
        } else {  /* Page(pfn), as pagebase_init() makes it */
            PyObject *zero = PyLong_FromLong(0);
            p = (PageBaseObject *)run_page_type->tp_alloc(run_page_type, 0);
            if (p == NULL)
                return NULL;
            p->pfn = (unsigned int)pfn;
            p->index = 0;
            p->private_ = 0;
            Py_INCREF(zero); p->count = zero;
            Py_INCREF(zero); p->mapcount = zero;
            Py_INCREF(zero); p->mapping_flags = zero;
            Py_INCREF(zero); p->flags = zero;
            p->csum = zero;
            Py_INCREF(Py_None); p->mapping = Py_None;
            Py_INCREF(Py_None); p->data = Py_None;
            Py_INCREF(Py_None); p->csum_of = Py_None;
            Py_INCREF(p);
            PyList_SET_ITEM(a->mem_map, pfn, (PyObject *)p);
            Py_DECREF(cur);  /* None */
        }
        a->fresh++;
        a->fresh_used = 1;
    }
    a->nr_free--;
    a->allocated++;
    one = PyLong_FromLong(1);
    Py_XSETREF(p->count, one);
    return p;
}

static void
run_alloc_clear(run_alloc_t *a)
{
    Py_XDECREF(a->machine);
    Py_XDECREF(a->zone);
    Py_XDECREF(a->mem_map);
    Py_XDECREF(a->free);
    Py_XDECREF(a->lru_active);
    Py_XDECREF(a->anon_vma);
}

PyDoc_STRVAR(write_page_run_doc,
"write_page_run(mm, vma, address, count, source, index, /)\n"
"--\n"
"\n"
"Write the pages source generates to a run of pages of a writable area, as\n"
"memory_shortcuts.write_page_run_py; return how many pages were written.");

static PyObject *
speedups_write_page_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *mm, *vma, *source, *pgd = NULL, *obj, *head, *table = NULL, *key = NULL;
    PyObject *mem_map = NULL;
    long long address, count, index, modulus, filler, done = 0, cur_key = -1, new_maps = 0;
    long kind;
    Py_buffer view;
    int have_view = 0, failed = 0;
    run_alloc_t a;
    (void)module;
    memset(&a, 0, sizeof(a));
    if (nargs != 6 || !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "write_page_run(mm, vma, address, count, source, index)");
        return NULL;
    }
    if (run_page_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "write_page_run: page_run_setup() first");
        return NULL;
    }
    mm = args[0];
    vma = args[1];
    source = args[4];
    address = PyLong_AsLongLong(args[2]);
    count = PyLong_AsLongLong(args[3]);
    index = PyLong_AsLongLong(args[5]);
    /* source: PageSource(kind, obj, modulus, head, filler) */
    kind = PyLong_AsLong(PyTuple_GET_ITEM(source, 0));
    obj = PyTuple_GET_ITEM(source, 1);
    modulus = PyLong_AsLongLong(PyTuple_GET_ITEM(source, 2));
    head = PyTuple_GET_ITEM(source, 3);
    filler = PyLong_AsLongLong(PyTuple_GET_ITEM(source, 4));
    if (PyErr_Occurred())
        return NULL;
    if (kind < 0 || kind > 2 ||
        (kind != 0 && (!PyBytes_Check(head) || filler < 0 || filler > 255)) ||
        (kind == 2 && (!PyList_Check(obj) || modulus < 1))) {
        PyErr_SetString(PyExc_TypeError, "write_page_run: a malformed source");
        return NULL;
    }
    pgd = PyObject_GetAttr(mm, run_s_pgd);
    if (pgd == NULL)
        return NULL;
    if (!PyDict_Check(pgd)) {
        Py_DECREF(pgd);
        PyErr_SetString(PyExc_TypeError, "write_page_run: mm.pgd is a dict");
        return NULL;
    }
    while (done < count) {
        long long addr = address + (done << RUN_PAGE_SHIFT);
        long long vpn = addr >> RUN_PAGE_SHIFT, k = vpn >> 9;
        unsigned long long pte;
        uint64_t *ptes;
        PyObject *data = run_source_page(kind, obj, modulus, head, filler, index + done);
        if (data == NULL) {
            failed = PyErr_Occurred() != NULL;
            break;
        }
        if (k != cur_key) {  /* the pte table of this page, as the pgd holds it */
            if (have_view) {
                PyBuffer_Release(&view);
                have_view = 0;
            }
            Py_CLEAR(table);
            Py_XSETREF(key, PyLong_FromLongLong(k));
            if (key == NULL) {
                Py_DECREF(data);
                failed = 1;
                break;
            }
            table = PyDict_GetItemWithError(pgd, key);
            Py_XINCREF(table);
            if (table == NULL && PyErr_Occurred()) {
                Py_DECREF(data);
                failed = 1;
                break;
            }
            if (table != NULL) {
                if (PyObject_GetBuffer(table, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
                    Py_DECREF(data);
                    failed = 1;
                    break;
                }
                have_view = 1;
                if (view.itemsize != 8 || view.len != 8 * RUN_PTRS_PER_PTE) {
                    Py_DECREF(data);
                    PyErr_SetString(PyExc_TypeError, "write_page_run: a malformed pte table");
                    failed = 1;
                    break;
                }
            }
            cur_key = k;
        }
        pte = have_view ? ((uint64_t *)view.buf)[vpn & (RUN_PTRS_PER_PTE - 1)] : 0;
        if ((pte & (RUN_PAGE_PRESENT | RUN_PAGE_RW | RUN_PAGE_SPECIAL)) ==
            (RUN_PAGE_PRESENT | RUN_PAGE_RW)) {
            /* Mapped writable: no fault, the access marks the pte young and dirty. */
            PyObject *page;
            unsigned long long pfn = pte >> RUN_PAGE_SHIFT;
            if (mem_map == NULL) {
                PyObject *machine = PyObject_GetAttr(mm, run_s_machine), *zone;
                zone = machine ? PyObject_GetAttr(machine, run_s_zone) : NULL;
                Py_XDECREF(machine);
                mem_map = zone ? PyObject_GetAttr(zone, run_s_mem_map) : NULL;
                Py_XDECREF(zone);
                if (mem_map == NULL) {
                    Py_DECREF(data);
                    failed = 1;
                    break;
                }
            }
            if (!PyList_Check(mem_map) || pfn >= (unsigned long long)PyList_GET_SIZE(mem_map)) {
                Py_DECREF(data);
                break;
            }
            page = PyList_GET_ITEM(mem_map, (Py_ssize_t)pfn);
            if (!PyObject_TypeCheck(page, run_page_type)) {  /* None: the exact path's */
                Py_DECREF(data);
                break;
            }
            ptes = (uint64_t *)view.buf;
            ptes[vpn & (RUN_PTRS_PER_PTE - 1)] = pte | RUN_PAGE_ACCESSED | RUN_PAGE_DIRTY;
            Py_XSETREF(((PageBaseObject *)page)->data, data);
            done++;
            continue;
        }
        if (pte != 0) {
            Py_DECREF(data);
            break;  /* a fault of another kind: the exact path's */
        }
        if (!a.loaded && run_alloc_load(&a, mm, vma) < 0) {
            Py_DECREF(data);
            failed = 1;
            break;
        }
        if (a.anon_vma == Py_None || a.nr_free <= 0) {
            Py_DECREF(data);
            break;  /* anon_vma_prepare() or an allocation failure: the exact path's */
        }
        {
            /* Never touched: do_anonymous_page() for a write, then the store. */
            PageBaseObject *p = run_alloc_page(&a);
            long flags;
            PyObject *v;
            if (p == NULL) {
                Py_DECREF(data);
                failed = 1;
                break;
            }
            if (table == NULL) {  /* set_pte_at() allocates the table */
                table = PyObject_CallNoArgs(run_new_table);
                if (table == NULL || PyDict_SetItem(pgd, key, table) < 0 ||
                    PyObject_GetBuffer(table, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
                    Py_DECREF(p);
                    Py_DECREF(data);
                    failed = 1;
                    break;
                }
                have_view = 1;
                if (view.itemsize != 8 || view.len != 8 * RUN_PTRS_PER_PTE) {
                    Py_DECREF(p);
                    Py_DECREF(data);
                    PyErr_SetString(PyExc_TypeError, "write_page_run: a malformed pte table");
                    failed = 1;
                    break;
                }
            }
            flags = PyLong_AsLong(p->flags);
            if (flags == -1 && PyErr_Occurred()) {
                Py_DECREF(p);
                Py_DECREF(data);
                failed = 1;
                break;
            }
            flags |= RUN_PG_SWAPBACKED | RUN_PG_UPTODATE | RUN_PG_LRU | RUN_PG_ACTIVE;
            v = PyLong_FromLong(flags);
            if (v == NULL || PyDict_SetItem(a.lru_active, (PyObject *)p, Py_None) < 0) {
                Py_XDECREF(v);
                Py_DECREF(p);
                Py_DECREF(data);
                failed = 1;
                break;
            }
            Py_XSETREF(p->flags, v);
            Py_XSETREF(p->mapcount, PyLong_FromLong(1));
            Py_INCREF(a.anon_vma);
            Py_XSETREF(p->mapping, a.anon_vma);
            Py_XSETREF(p->mapping_flags, PyLong_FromLong(RUN_MAPPING_ANON));
            p->index = (Py_ssize_t)(((addr - a.vm_start) >> RUN_PAGE_SHIFT) + a.vm_pgoff);
            ((uint64_t *)view.buf)[vpn & (RUN_PTRS_PER_PTE - 1)] =
                ((unsigned long long)p->pfn << RUN_PAGE_SHIFT) | RUN_PAGE_PRESENT |
                RUN_PAGE_RW | RUN_PAGE_DIRTY | RUN_PAGE_ACCESSED;
            Py_XSETREF(p->data, data);
            Py_DECREF(p);
            new_maps++;
            done++;
        }
    }
    if (have_view)
        PyBuffer_Release(&view);
    Py_XDECREF(table);
    Py_XDECREF(key);
    Py_XDECREF(mem_map);
    Py_DECREF(pgd);
    /* The counters of the pages made: the zone's, the machine's and the mm's. */
    if (a.loaded && a.zone != NULL) {
        PyObject *et = NULL, *ev = NULL, *tb = NULL;
        int rc = 0;
        if (failed)
            PyErr_Fetch(&et, &ev, &tb);
        if (a.allocated) {
            rc |= run_set_ll(a.zone, run_s_nr_free, a.nr_free);
            if (a.fresh_used)
                rc |= run_set_ll(a.zone, run_s_fresh, a.fresh);
        }
        if (new_maps) {
            rc |= run_add_ll(a.zone, run_s_map_generation, new_maps);
            rc |= run_add_ll(a.machine, run_s_nr_anon_pages, new_maps);
            rc |= run_add_ll(mm, run_s_anon_rss, new_maps);
        }
        if (failed)
            PyErr_Restore(et, ev, tb);
        else if (rc)
            failed = 1;
    }
    run_alloc_clear(&a);
    if (failed)
        return NULL;
    return PyLong_FromLongLong(done);
}

/* ---------------------------------------------------------------------------
 * Tree-walk shortcuts (ksmsim.kernel.ksm_shortcuts).
 *
 * The nodes are Python objects with __slots__; tree_setup() is handed the
 * slot descriptors once, and the walks read the slots at their offsets, as
 * the member descriptors themselves do.
 * ------------------------------------------------------------------------- */

typedef struct {
    int ready;
    PyTypeObject *rbnode_type, *item_type, *stable_type, *page_type;
    Py_ssize_t rb_left, rb_right, tree_page, sn_page, sn_hlist_len, sn_dup_next;
    Py_ssize_t pg_data, pg_mapping, pg_mapping_flags, pg_count;
    long chain_len;
    long ksm_flags;
    int page_native;            /* pages are PageBase objects: fields read from the struct */
} tree_layout;

static tree_layout layout;

/* The offset of a __slots__ member, from its descriptor (-1 with an error set). */
static Py_ssize_t
slot_offset(PyObject *descr, PyTypeObject *owner)
{
    PyMemberDef *m;
    if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_SetString(PyExc_TypeError, "tree_setup: expected a __slots__ member descriptor");
        return -1;
    }
    if (!PyType_IsSubtype(owner, PyDescr_TYPE(descr))) {
        PyErr_SetString(PyExc_TypeError, "tree_setup: descriptor of another class");
        return -1;
    }
    m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != T_OBJECT_EX) {
        PyErr_SetString(PyExc_TypeError, "tree_setup: not an object slot");
        return -1;
    }
    return m->offset;
}

/* The head of the *_setup() functions: exactly `want` arguments, the first `nclasses` of them
 * classes; -1 with TypeError otherwise. */
static int
setup_head(const char *name, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
           int nclasses)
{
    int i;
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments", name, want);
        return -1;
    }
    for (i = 0; i < nclasses; i++) {
        if (!PyType_Check(args[i])) {
            PyErr_Format(PyExc_TypeError, "%s: the first %d arguments are classes", name,
                         nclasses);
            return -1;
        }
    }
    return 0;
}

/* A slot's value, borrowed; NULL with AttributeError when the slot is unset. */
static inline PyObject *
slot_get(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = *(PyObject **)((char *)obj + off);
    if (v == NULL)
        PyErr_SetString(PyExc_AttributeError, "unset slot in a tree walk");
    return v;
}

/* A small-int slot's value; -1 with an error set when it is not an int. */
static inline int
slot_long(PyObject *obj, Py_ssize_t off, long *out)
{
    PyObject *v = slot_get(obj, off);
    if (v == NULL)
        return -1;
    if (!PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "tree walk: int slot holds a non-int");
        return -1;
    }
    *out = PyLong_AsLong(v);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

/* Compare page contents as `a == b` then `a < b` do: -1, 0 or 1; -2 on error. */
static inline int
contents_cmp(PyObject *a, PyObject *b)
{
    int r;
    if (a == b)
        return 0;
    if (PyBytes_CheckExact(a)) {
        if (PyBytes_CheckExact(b)) {
            Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
            int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b),
                           (size_t)(la < lb ? la : lb));
            if (c)
                return c < 0 ? -1 : 1;
            return la == lb ? 0 : (la < lb ? -1 : 1);
        }
        if (Py_IS_TYPE(b, &PageText_Type)) {
            int c = pagetext_cmp_raw((PageTextObject *)b,
                                     (const unsigned char *)PyBytes_AS_STRING(a),
                                     PyBytes_GET_SIZE(a));
            return c < 0 ? 1 : (c > 0 ? -1 : 0);
        }
    } else if (Py_IS_TYPE(a, &PageText_Type)) {
        int c;
        if (Py_IS_TYPE(b, &PageText_Type))
            c = pagetext_cmp_pt((PageTextObject *)a, (PageTextObject *)b);
        else if (PyBytes_CheckExact(b))
            c = pagetext_cmp_raw((PageTextObject *)a, (const unsigned char *)PyBytes_AS_STRING(b),
                                 PyBytes_GET_SIZE(b));
        else
            goto generic;
        return c < 0 ? -1 : (c > 0 ? 1 : 0);
    }
generic:
    r = PyObject_RichCompareBool(a, b, Py_EQ);
    if (r < 0)
        return -2;
    if (r)
        return 0;
    r = PyObject_RichCompareBool(a, b, Py_LT);
    if (r < 0)
        return -2;
    return r ? -1 : 1;
}

PyDoc_STRVAR(tree_setup_doc,
"tree_setup(rbnode, item, stable, page, rb_left, rb_right, tree_page, sn_page,\n"
"           sn_hlist_len, pg_data, pg_mapping, pg_mapping_flags, pg_count,\n"
"           chain_len, ksm_flags, sn_dup_next, /)\n"
"--\n"
"\n"
"Tell the tree walks the node and page classes and their slot descriptors.");

static PyObject *
speedups_tree_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    tree_layout l;
    (void)module;
    if (setup_head("tree_setup", args, nargs, 16, 4) < 0)
        return NULL;
    l.rbnode_type = (PyTypeObject *)args[0];
    l.item_type = (PyTypeObject *)args[1];
    l.stable_type = (PyTypeObject *)args[2];
    l.page_type = (PyTypeObject *)args[3];
    if ((l.rb_left = slot_offset(args[4], l.rbnode_type)) < 0 ||
        (l.rb_right = slot_offset(args[5], l.rbnode_type)) < 0 ||
        (l.tree_page = slot_offset(args[6], l.item_type)) < 0 ||
        (l.sn_page = slot_offset(args[7], l.stable_type)) < 0 ||
        (l.sn_hlist_len = slot_offset(args[8], l.stable_type)) < 0 ||
        (l.sn_dup_next = slot_offset(args[15], l.stable_type)) < 0)
        return NULL;
    l.page_native = PyType_IsSubtype(l.page_type, &PageBase_Type);
    if (!l.page_native &&
        ((l.pg_data = slot_offset(args[9], l.page_type)) < 0 ||
         (l.pg_mapping = slot_offset(args[10], l.page_type)) < 0 ||
         (l.pg_mapping_flags = slot_offset(args[11], l.page_type)) < 0 ||
         (l.pg_count = slot_offset(args[12], l.page_type)) < 0))
        return NULL;
    l.chain_len = PyLong_AsLong(args[13]);
    if (l.chain_len == -1 && PyErr_Occurred())
        return NULL;
    l.ksm_flags = PyLong_AsLong(args[14]);
    if (l.ksm_flags == -1 && PyErr_Occurred())
        return NULL;
    /* The classes live as long as the interpreter: keep them so. */
    Py_INCREF(l.rbnode_type);
    Py_INCREF(l.item_type);
    Py_INCREF(l.stable_type);
    Py_INCREF(l.page_type);
    l.ready = 1;
    layout = l;
    Py_RETURN_NONE;
}

/* A page's contents (borrowed), as either layout holds them; NULL with an error set. */
static inline PyObject *
page_data(PyObject *page)
{
    if (layout.page_native) {
        PyObject *v = ((PageBaseObject *)page)->data;
        return v ? v : Py_None;
    }
    return slot_get(page, layout.pg_data);
}

/* 1 when get_ksm_page() would take the page for the node (keyhole test), 0 if not, -1 on error. */
static inline int
page_keyhole_ok(PyObject *page, PyObject *node)
{
    long flags, count;
    PyObject *mapping;
    if (layout.page_native) {
        PageBaseObject *p = (PageBaseObject *)page;
        if (p->mapping != node)
            return 0;
        if (!PyLong_Check(p->mapping_flags) || !PyLong_Check(p->count)) {
            PyErr_SetString(PyExc_TypeError, "tree walk: page field holds a non-int");
            return -1;
        }
        flags = PyLong_AsLong(p->mapping_flags);
        count = PyLong_AsLong(p->count);
        if ((flags == -1 || count == -1) && PyErr_Occurred())
            return -1;
        return flags == layout.ksm_flags && count != 0;
    }
    mapping = slot_get(page, layout.pg_mapping);
    if (mapping == NULL)
        return -1;
    if (mapping != node)
        return 0;
    if (slot_long(page, layout.pg_mapping_flags, &flags) < 0)
        return -1;
    if (flags != layout.ksm_flags)
        return 0;
    if (slot_long(page, layout.pg_count, &count) < 0)
        return -1;
    return count != 0;
}

/* The result tuple of a walk: (node or None, parent or None, left, compares). */
static PyObject *
walk_result(PyObject *node, PyObject *parent, int left, Py_ssize_t n)
{
    return Py_BuildValue("(OOOn)", node, parent ? parent : Py_None,
                         left ? Py_True : Py_False, n);
}

static int
walk_ready(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name)
{
    if (!layout.ready) {
        PyErr_Format(PyExc_RuntimeError, "%s() before tree_setup()", name);
        return 0;
    }
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments", name, want);
        return 0;
    }
    (void)args;
    return 1;
}

PyDoc_STRVAR(unstable_skip_doc,
"unstable_skip(node, data, /)\n"
"--\n"
"\n"
"Walk down from an unstable-tree node past every node whose recorded page\n"
"holds contents other than data; stop at a node with no recorded page or\n"
"with equal contents.  Returns (node or None, parent, left, compares).");

static PyObject *
speedups_unstable_skip(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *node, *data, *parent = NULL, *page, *tree_data;
    int left = 0, c;
    Py_ssize_t n = 0;
    (void)module;
    if (!walk_ready(args, nargs, 2, "unstable_skip"))
        return NULL;
    node = args[0];
    data = args[1];
    while (node != Py_None) {
        if (!PyObject_TypeCheck(node, layout.item_type)) {
            PyErr_SetString(PyExc_TypeError, "unstable_skip: a node that is not an rmap_item");
            return NULL;
        }
        page = slot_get(node, layout.tree_page);
        if (page == NULL)
            return NULL;
        if (page == Py_None)
            break;
        if (!PyObject_TypeCheck(page, layout.page_type)) {
            PyErr_SetString(PyExc_TypeError, "unstable_skip: tree_page is not a page");
            return NULL;
        }
        tree_data = page_data(page);
        if (tree_data == NULL)
            return NULL;
        if (tree_data == Py_None)
            break;
        c = contents_cmp(data, tree_data);
        if (c == -2)
            return NULL;
        if (c == 0)
            break;
        n++;
        parent = node;
        left = c < 0;
        node = slot_get(node, left ? layout.rb_left : layout.rb_right);
        if (node == NULL)
            return NULL;
    }
    return walk_result(node, parent, left, n);
}


PyDoc_STRVAR(dup_skip_doc,
"dup_skip(dup, found, found_len, max_page_sharing, prune, pinned, /)\n"
"--\n"
"\n"
"Walk a chain's dups from dup as stable_node_dup() does, past every dup whose\n"
"page get_ksm_page() would return, choosing the best as it does; stop at a\n"
"dup failing that test, at the end, or where it breaks off.  Returns\n"
"(dup to take the exact step at or None, found, found_len, broke off).");

static PyObject *
speedups_dup_skip(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *dup, *found, *page, *next;
    long found_len, max_sharing, n, fn;
    int prune, pinned, ok, cand;
    (void)module;
    if (!walk_ready(args, nargs, 6, "dup_skip"))
        return NULL;
    dup = args[0];
    found = args[1];
    found_len = PyLong_AsLong(args[2]);
    max_sharing = PyLong_AsLong(args[3]);
    prune = PyObject_IsTrue(args[4]);
    pinned = PyObject_IsTrue(args[5]);
    if (PyErr_Occurred() || prune < 0 || pinned < 0)
        return NULL;
    while (dup != Py_None) {
        if (!PyObject_TypeCheck(dup, layout.stable_type)) {
            PyErr_SetString(PyExc_TypeError, "dup_skip: a dup that is not a stable node");
            return NULL;
        }
        page = slot_get(dup, layout.sn_page);
        if (page == NULL)
            return NULL;
        if (page == Py_None)
            break;
        if (!PyObject_TypeCheck(page, layout.page_type)) {
            PyErr_SetString(PyExc_TypeError, "dup_skip: dup.page is not a page");
            return NULL;
        }
        if (!pinned) {
            ok = page_keyhole_ok(page, dup);
            if (ok < 0)
                return NULL;
            if (!ok)
                break;
        }
        next = slot_get(dup, layout.sn_dup_next);
        if (next == NULL || slot_long(dup, layout.sn_hlist_len, &n) < 0)
            return NULL;
        cand = n > 0 && n < max_sharing;
        if (found != Py_None) {
            if (slot_long(found, layout.sn_hlist_len, &fn) < 0)
                return NULL;
        } else {
            fn = 0;
        }
        if (found == Py_None || (cand && (!(fn > 0 && fn < max_sharing) || n > found_len))) {
            found = dup;
            found_len = n;
            if (!prune && cand)
                return Py_BuildValue("(OOlO)", next, found, found_len, Py_True);
        }
        dup = next;
    }
    return Py_BuildValue("(OOlO)", dup, found, found_len, Py_False);
}

PyDoc_STRVAR(stable_skip_doc,
"stable_skip(node, data, pinned, /)\n"
"--\n"
"\n"
"Walk down from a stable-tree node past every regular node whose page\n"
"get_ksm_page() would return (its mapping is the node, KSM-flagged, count\n"
"above zero; any page when pinned) and whose contents differ from data;\n"
"stop at a chain, a node failing that test, or equal contents.  Returns\n"
"(node or None, parent, left, compares).");

static PyObject *
speedups_stable_skip(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *node, *data, *parent = NULL, *page, *tree_data;
    int left = 0, c, pinned;
    long v;
    Py_ssize_t n = 0;
    (void)module;
    if (!walk_ready(args, nargs, 3, "stable_skip"))
        return NULL;
    node = args[0];
    data = args[1];
    pinned = PyObject_IsTrue(args[2]);
    if (pinned < 0)
        return NULL;
    while (node != Py_None) {
        if (!PyObject_TypeCheck(node, layout.stable_type)) {
            PyErr_SetString(PyExc_TypeError, "stable_skip: a node that is not a stable node");
            return NULL;
        }
        if (slot_long(node, layout.sn_hlist_len, &v) < 0)
            return NULL;
        if (v == layout.chain_len)
            break;
        page = slot_get(node, layout.sn_page);
        if (page == NULL)
            return NULL;
        if (page == Py_None)
            break;
        if (!PyObject_TypeCheck(page, layout.page_type)) {
            PyErr_SetString(PyExc_TypeError, "stable_skip: node.page is not a page");
            return NULL;
        }
        if (!pinned) {
            int ok = page_keyhole_ok(page, node);
            if (ok < 0)
                return NULL;
            if (!ok)
                break;
        }
        tree_data = page_data(page);
        if (tree_data == NULL)
            return NULL;
        if (tree_data == Py_None)
            break;
        c = contents_cmp(data, tree_data);
        if (c == -2)
            return NULL;
        if (c == 0)
            break;
        n++;
        parent = node;
        left = c < 0;
        node = slot_get(node, left ? layout.rb_left : layout.rb_right);
        if (node == NULL)
            return NULL;
    }
    return walk_result(node, parent, left, n);
}


static inline long pb_long(PyObject *v, int *err);
static inline int pb_set(PyObject **field, long x);

static Py_ssize_t sn_dups_off = -1, sn_prune_off = -1;
static long find_pg_locked;

PyDoc_STRVAR(find_setup_doc,
"find_setup(sn_dups, sn_chain_prune_time, pg_locked, /)\n"
"--\n"
"\n"
"Tell stable_find the slots of a chain and the page lock bit.");

static PyObject *
speedups_find_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t a, b;
    long locked;
    (void)module;
    if (!layout.ready) {
        PyErr_SetString(PyExc_RuntimeError, "find_setup() before tree_setup()");
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "find_setup() takes exactly 3 arguments");
        return NULL;
    }
    if ((a = slot_offset(args[0], layout.stable_type)) < 0 ||
        (b = slot_offset(args[1], layout.stable_type)) < 0)
        return NULL;
    locked = PyLong_AsLong(args[2]);
    if (locked == -1 && PyErr_Occurred())
        return NULL;
    sn_dups_off = a;
    sn_prune_off = b;
    find_pg_locked = locked;
    Py_RETURN_NONE;
}

/* 1 when the page (a PageBase) can be taken for node as the search takes a found page: its
 * keyhole holds (mapping is node, KSM flags, count above zero unless pinned), it is unlocked
 * and holds data; 0 if not, -1 on error. */
static int
find_takes(PyObject *page_obj, PyObject *node, PyObject *data, int pinned)
{
    PageBaseObject *p = (PageBaseObject *)page_obj;
    long flags, mflags, count;
    int err = 0, c;
    if (p->mapping != node)
        return 0;
    mflags = pb_long(p->mapping_flags, &err);
    flags = err ? 0 : pb_long(p->flags, &err);
    count = err ? 0 : pb_long(p->count, &err);
    if (err)
        return -1;
    if (mflags != layout.ksm_flags || (!pinned && count == 0) || (flags & find_pg_locked))
        return 0;
    if (p->data == NULL || p->data == Py_None)
        return 0;
    c = contents_cmp(p->data, data);
    if (c == -2)
        return -1;
    return c == 0;
}

PyDoc_STRVAR(stable_find_doc,
"stable_find(node, data, pinned, chains, max_page_sharing, prune_floor, /)\n"
"--\n"
"\n"
"stable_skip(), then take the node it stops at when the search would take its\n"
"page (or a chain's first dup's) at once: returns (page with a reference, None,\n"
"compares) or (None, node to take the exact step at, compares).");

static PyObject *
speedups_stable_find(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *walk, *node, *page, *head, *next, *t;
    Py_ssize_t n;
    long len, max_sharing, floor_, prune_time;
    int pinned, chains, ok;
    PageBaseObject *hit = NULL;
    if (!layout.ready || sn_dups_off < 0 || !layout.page_native) {
        PyErr_SetString(PyExc_RuntimeError, "stable_find() before find_setup(), or no PageBase");
        return NULL;
    }
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "stable_find() takes exactly 6 arguments");
        return NULL;
    }
    pinned = PyObject_IsTrue(args[2]);
    chains = PyObject_IsTrue(args[3]);
    max_sharing = PyLong_AsLong(args[4]);
    floor_ = PyLong_AsLong(args[5]);
    if (pinned < 0 || chains < 0 || PyErr_Occurred())
        return NULL;
    walk = speedups_stable_skip(module, args, 3);
    if (walk == NULL)
        return NULL;
    node = PyTuple_GET_ITEM(walk, 0);
    n = PyLong_AsSsize_t(PyTuple_GET_ITEM(walk, 3));
    if (n == -1 && PyErr_Occurred())
        goto error;
    if (node == Py_None)
        goto miss;
    if (slot_long(node, layout.sn_hlist_len, &len) < 0)
        goto error;
    if (len != layout.chain_len) {
        /* A regular node: taken when it is a sharing candidate (or there are no chains). */
        page = slot_get(node, layout.sn_page);
        if (page == NULL)
            goto error;
        if (page == Py_None || !PyObject_TypeCheck(page, &PageBase_Type))
            goto miss;
        if (chains && !(len > 0 && len < max_sharing))
            goto miss;
        ok = find_takes(page, node, args[1], pinned);
        if (ok < 0)
            goto error;
        if (ok)
            hit = (PageBaseObject *)page;
    } else if (chains) {
        /* A chain whose first dup has room, is not alone, and no prune due. */
        head = slot_get(node, sn_dups_off);
        if (head == NULL)
            goto error;
        if (head == Py_None)
            goto miss;
        next = slot_get(head, layout.sn_dup_next);
        if (next == NULL)
            goto error;
        if (next == Py_None)
            goto miss;
        if (slot_long(head, layout.sn_hlist_len, &len) < 0 ||
            slot_long(node, sn_prune_off, &prune_time) < 0)
            goto error;
        if (!(len > 0 && len < max_sharing) || !(prune_time > floor_))
            goto miss;
        page = slot_get(head, layout.sn_page);
        if (page == NULL)
            goto error;
        if (page == Py_None || !PyObject_TypeCheck(page, &PageBase_Type))
            goto miss;
        ok = find_takes(page, head, args[1], pinned);
        if (ok < 0)
            goto error;
        if (ok)
            hit = (PageBaseObject *)page;
    }
    if (hit != NULL) {
        int err = 0;
        long count = pb_long(hit->count, &err);
        if (err || pb_set(&hit->count, count + 1) < 0)
            goto error;
        t = Py_BuildValue("(OOn)", (PyObject *)hit, Py_None, n + 1);
        Py_DECREF(walk);
        return t;
    }
miss:
    t = Py_BuildValue("(OOn)", Py_None, node, n);
    Py_DECREF(walk);
    return t;
error:
    Py_DECREF(walk);
    return NULL;
}


/* ---------------------------------------------------------------------------
 * rb_insert_color(node, root): lib/rbtree.c's insert rebalancing (v2.6.33) on
 * the nodes of ksmsim.kernel.rbtree, step for step as the pure-Python
 * rb_insert_color there (same rotations, same colours).
 * ------------------------------------------------------------------------- */

typedef struct {
    int ready;
    PyTypeObject *node_type, *root_type;
    Py_ssize_t parent, left, right, red, root_node;
} rb_layout_t;

static rb_layout_t rb_layout;

/* A link slot's value, borrowed (None for "no node"). */
static inline PyObject *
rb_get(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = *(PyObject **)((char *)obj + off);
    return v ? v : Py_None;
}

/* Store a new reference in a slot, dropping the old one. */
static inline void
rb_set(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)obj + off);
    PyObject *old = *slot;
    Py_INCREF(value);
    *slot = value;
    Py_XDECREF(old);
}

static inline int
rb_is_red(PyObject *node)
{
    PyObject *v;
    if (node == Py_None)
        return 0;
    v = rb_get(node, rb_layout.red);
    if (v == Py_True)
        return 1;
    if (v == Py_False || v == Py_None)
        return 0;
    return PyObject_IsTrue(v);
}

static inline void
rb_set_red(PyObject *node, int red)
{
    rb_set(node, rb_layout.red, red ? Py_True : Py_False);
}

static void
rb_rotate_left(PyObject *node, PyObject *root)
{
    PyObject *right = rb_get(node, rb_layout.right);
    PyObject *parent = rb_get(node, rb_layout.parent);
    PyObject *inner = rb_get(right, rb_layout.left);
    Py_INCREF(right);
    Py_INCREF(parent);
    rb_set(node, rb_layout.right, inner);
    if (inner != Py_None)
        rb_set(inner, rb_layout.parent, node);
    rb_set(right, rb_layout.left, node);
    rb_set(right, rb_layout.parent, parent);
    if (parent == Py_None)
        rb_set(root, rb_layout.root_node, right);
    else if (rb_get(parent, rb_layout.left) == node)
        rb_set(parent, rb_layout.left, right);
    else
        rb_set(parent, rb_layout.right, right);
    rb_set(node, rb_layout.parent, right);
    Py_DECREF(parent);
    Py_DECREF(right);
}

static void
rb_rotate_right(PyObject *node, PyObject *root)
{
    PyObject *left = rb_get(node, rb_layout.left);
    PyObject *parent = rb_get(node, rb_layout.parent);
    PyObject *inner = rb_get(left, rb_layout.right);
    Py_INCREF(left);
    Py_INCREF(parent);
    rb_set(node, rb_layout.left, inner);
    if (inner != Py_None)
        rb_set(inner, rb_layout.parent, node);
    rb_set(left, rb_layout.right, node);
    rb_set(left, rb_layout.parent, parent);
    if (parent == Py_None)
        rb_set(root, rb_layout.root_node, left);
    else if (rb_get(parent, rb_layout.right) == node)
        rb_set(parent, rb_layout.right, left);
    else
        rb_set(parent, rb_layout.left, left);
    rb_set(node, rb_layout.parent, left);
    Py_DECREF(parent);
    Py_DECREF(left);
}

PyDoc_STRVAR(rb_setup_doc,
"rb_setup(node_class, root_class, rb_parent, rb_left, rb_right, rb_red, rb_node, /)\n"
"--\n"
"\n"
"Tell rb_insert_color the node and root classes and their slot descriptors.");

static PyObject *
speedups_rb_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    rb_layout_t l;
    (void)module;
    if (nargs != 7 || !PyType_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "rb_setup() takes two classes and five descriptors");
        return NULL;
    }
    l.node_type = (PyTypeObject *)args[0];
    l.root_type = (PyTypeObject *)args[1];
    if ((l.parent = slot_offset(args[2], l.node_type)) < 0 ||
        (l.left = slot_offset(args[3], l.node_type)) < 0 ||
        (l.right = slot_offset(args[4], l.node_type)) < 0 ||
        (l.red = slot_offset(args[5], l.node_type)) < 0 ||
        (l.root_node = slot_offset(args[6], l.root_type)) < 0)
        return NULL;
    Py_INCREF(l.node_type);
    Py_INCREF(l.root_type);
    l.ready = 1;
    rb_layout = l;
    Py_RETURN_NONE;
}

/* Check that every node met is a node with its slots set (they are read unchecked after). */
static int
rb_check(PyObject *node)
{
    if (!PyObject_TypeCheck(node, rb_layout.node_type)) {
        PyErr_SetString(PyExc_TypeError, "rb_insert_color: not a tree node");
        return -1;
    }
    if (*(PyObject **)((char *)node + rb_layout.parent) == NULL ||
        *(PyObject **)((char *)node + rb_layout.left) == NULL ||
        *(PyObject **)((char *)node + rb_layout.right) == NULL ||
        *(PyObject **)((char *)node + rb_layout.red) == NULL) {
        PyErr_SetString(PyExc_AttributeError, "rb_insert_color: a node with unset links");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(rb_insert_color_doc,
"rb_insert_color(node, root, /)\n"
"--\n"
"\n"
"Restore the red-black rules after linking node: rb_insert_color() of\n"
"lib/rbtree.c (v2.6.33), as ksmsim.kernel.rbtree.rb_insert_color.");

static PyObject *
speedups_rb_insert_color(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *node, *root, *parent, *gparent, *uncle, *top;
    int red;
    (void)module;
    if (!rb_layout.ready) {
        PyErr_SetString(PyExc_RuntimeError, "rb_insert_color() before rb_setup()");
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rb_insert_color() takes exactly 2 arguments");
        return NULL;
    }
    node = args[0];
    root = args[1];
    if (!PyObject_TypeCheck(root, rb_layout.root_type)) {
        PyErr_SetString(PyExc_TypeError, "rb_insert_color: not a tree root");
        return NULL;
    }
    if (rb_check(node) < 0)
        return NULL;
    /* Hold the nodes we work on: relinking must never free one under us. */
    Py_INCREF(node);
    parent = rb_get(node, rb_layout.parent);
    for (;;) {
        if (parent == Py_None)
            break;
        if (rb_check(parent) < 0)
            goto error;
        red = rb_is_red(parent);
        if (red < 0)
            goto error;
        if (!red)
            break;
        gparent = rb_get(parent, rb_layout.parent);
        if (gparent == Py_None || rb_check(gparent) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AssertionError, "rb_insert_color: a red root");
            goto error;
        }
        Py_INCREF(parent);
        Py_INCREF(gparent);
        if (parent == rb_get(gparent, rb_layout.left)) {
            uncle = rb_get(gparent, rb_layout.right);
            red = uncle != Py_None ? rb_is_red(uncle) : 0;
            if (red < 0) {
                Py_DECREF(parent);
                Py_DECREF(gparent);
                goto error;
            }
            if (red) {
                rb_set_red(uncle, 0);
                rb_set_red(parent, 0);
                rb_set_red(gparent, 1);
                Py_DECREF(node);
                node = gparent;     /* keeps the reference taken above */
                Py_DECREF(parent);
                parent = rb_get(node, rb_layout.parent);
                continue;
            }
            if (rb_get(parent, rb_layout.right) == node) {
                PyObject *t;
                rb_rotate_left(parent, root);
                t = parent;
                parent = node;
                node = t;
            }
            rb_set_red(parent, 0);
            rb_set_red(gparent, 1);
            rb_rotate_right(gparent, root);
        } else {
            uncle = rb_get(gparent, rb_layout.left);
            red = uncle != Py_None ? rb_is_red(uncle) : 0;
            if (red < 0) {
                Py_DECREF(parent);
                Py_DECREF(gparent);
                goto error;
            }
            if (red) {
                rb_set_red(uncle, 0);
                rb_set_red(parent, 0);
                rb_set_red(gparent, 1);
                Py_DECREF(node);
                node = gparent;
                Py_DECREF(parent);
                parent = rb_get(node, rb_layout.parent);
                continue;
            }
            if (rb_get(parent, rb_layout.left) == node) {
                PyObject *t;
                rb_rotate_right(parent, root);
                t = parent;
                parent = node;
                node = t;
            }
            rb_set_red(parent, 0);
            rb_set_red(gparent, 1);
            rb_rotate_left(gparent, root);
        }
        Py_DECREF(parent);
        Py_DECREF(gparent);
        break;
    }
    Py_DECREF(node);
    top = rb_get(root, rb_layout.root_node);
    if (top == Py_None) {
        PyErr_SetString(PyExc_AssertionError, "rb_insert_color: an empty tree");
        return NULL;
    }
    rb_set_red(top, 0);
    Py_RETURN_NONE;
error:
    Py_DECREF(node);
    return NULL;
}


/* ---------------------------------------------------------------------------
 * rb_erase(node, root): lib/rbtree.c's erase (v2.6.33) on the nodes of
 * ksmsim.kernel.rbtree, step for step as the pure-Python rb_erase and
 * _rb_erase_color there (same splice, same successor, same rotations and
 * colours); the erased node's three links are left None.  Uses rb_setup()'s
 * layout.  (speed-merge2)
 * ------------------------------------------------------------------------- */

/* A node's link, checked to be a node when it must be one (the Python asserts). */
static inline PyObject *
rb_get_node(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = rb_get(obj, off);
    if (v == Py_None) {
        PyErr_SetString(PyExc_AssertionError, "rb_erase: a missing node");
        return NULL;
    }
    if (rb_check(v) < 0)
        return NULL;
    return v;
}

/* A link that may be None, checked to be a node otherwise. */
static inline int
rb_get_link(PyObject *obj, Py_ssize_t off, PyObject **out)
{
    PyObject *v = rb_get(obj, off);
    if (v != Py_None && rb_check(v) < 0)
        return -1;
    *out = v;
    return 0;
}

/* Whether a node (or None) is black; -1 on error. */
static inline int
rb_is_black(PyObject *node)
{
    int red = rb_is_red(node);
    return red < 0 ? -1 : !red;
}

/* _rb_erase_color(): repair a missing black at node (None or a node) below parent.  Every
 * node met is linked in the tree, which holds it, so borrowed references do. */
static int
rb_erase_color_c(PyObject *node, PyObject *parent, PyObject *root)
{
    PyObject *other, *near, *far;
    int black, near_black, far_black;
    for (;;) {
        black = rb_is_black(node);
        if (black < 0)
            return -1;
        if (!black || node == rb_get(root, rb_layout.root_node))
            break;
        if (parent == Py_None) {
            PyErr_SetString(PyExc_AssertionError, "rb_erase: a missing parent");
            return -1;
        }
        {
            /* The kernel writes the two mirror cases out; here one body serves both: the
             * node's side ("toward"), its sibling's ("away"), and the rotations that bring
             * the sibling's side up (rot_toward) or the node's side up (rot_away). */
            int node_left = rb_get(parent, rb_layout.left) == node;
            Py_ssize_t toward = node_left ? rb_layout.left : rb_layout.right;
            Py_ssize_t away = node_left ? rb_layout.right : rb_layout.left;
            void (*rot_toward)(PyObject *, PyObject *) = node_left ? rb_rotate_left : rb_rotate_right;
            void (*rot_away)(PyObject *, PyObject *) = node_left ? rb_rotate_right : rb_rotate_left;
            if (!(other = rb_get_node(parent, away)))
                return -1;
            if (rb_is_red(other) > 0) {
                rb_set_red(other, 0);
                rb_set_red(parent, 1);
                rot_toward(parent, root);
                if (!(other = rb_get_node(parent, away)))
                    return -1;
            }
            if (rb_get_link(other, toward, &near) < 0 || rb_get_link(other, away, &far) < 0)
                return -1;
            if ((near_black = rb_is_black(near)) < 0 || (far_black = rb_is_black(far)) < 0)
                return -1;
            if (near_black && far_black) {
                rb_set_red(other, 1);
                node = parent;
                if (rb_get_link(node, rb_layout.parent, &parent) < 0)
                    return -1;
                continue;
            }
            if (far_black) {
                if (near == Py_None) {
                    PyErr_SetString(PyExc_AssertionError, "rb_erase: a missing node");
                    return -1;
                }
                rb_set_red(near, 0);
                rb_set_red(other, 1);
                rot_away(other, root);
                if (!(other = rb_get_node(parent, away)))
                    return -1;
                if (rb_get_link(other, away, &far) < 0)
                    return -1;
            }
            rb_set(other, rb_layout.red, rb_get(parent, rb_layout.red));
            rb_set_red(parent, 0);
            if (far == Py_None) {
                PyErr_SetString(PyExc_AssertionError, "rb_erase: a missing node");
                return -1;
            }
            rb_set_red(far, 0);
            rot_toward(parent, root);
        }
        node = rb_get(root, rb_layout.root_node);
        break;
    }
    if (node != Py_None)
        rb_set_red(node, 0);
    return 0;
}

/* Point parent's link to old (or the root's, with parent None) at new. */
static inline void
rb_change_child(PyObject *old, PyObject *new_, PyObject *parent, PyObject *root)
{
    if (parent == Py_None)
        rb_set(root, rb_layout.root_node, new_);
    else if (rb_get(parent, rb_layout.left) == old)
        rb_set(parent, rb_layout.left, new_);
    else
        rb_set(parent, rb_layout.right, new_);
}

PyDoc_STRVAR(rb_erase_doc,
"rb_erase(node, root, /)\n"
"--\n"
"\n"
"Unlink node from the tree and rebalance: rb_erase() of lib/rbtree.c\n"
"(v2.6.33), as ksmsim.kernel.rbtree.rb_erase; node's links are left None.");

static PyObject *
speedups_rb_erase(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *node, *root, *left, *right, *child, *parent, *succ, *nxt, *above;
    int lost_black, rc;
    (void)module;
    if (!rb_layout.ready) {
        PyErr_SetString(PyExc_RuntimeError, "rb_erase() before rb_setup()");
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rb_erase() takes exactly 2 arguments");
        return NULL;
    }
    node = args[0];
    root = args[1];
    if (!PyObject_TypeCheck(root, rb_layout.root_type)) {
        PyErr_SetString(PyExc_TypeError, "rb_erase: not a tree root");
        return NULL;
    }
    if (rb_check(node) < 0 || rb_get_link(node, rb_layout.left, &left) < 0 ||
        rb_get_link(node, rb_layout.right, &right) < 0 ||
        rb_get_link(node, rb_layout.parent, &above) < 0)
        return NULL;
    /* Hold the erased node and its children while the links move. */
    Py_INCREF(node);
    Py_INCREF(left);
    Py_INCREF(right);
    if (left != Py_None && right != Py_None) {
        /* Two children: the in-order successor takes the node's place and colour. */
        succ = right;
        for (;;) {
            if (rb_get_link(succ, rb_layout.left, &nxt) < 0)
                goto error;
            if (nxt == Py_None)
                break;
            succ = nxt;
        }
        if (rb_get_link(succ, rb_layout.right, &child) < 0 ||
            !(parent = rb_get_node(succ, rb_layout.parent)))
            goto error;
        if ((lost_black = rb_is_black(succ)) < 0)
            goto error;
        rb_change_child(node, succ, above, root);
        if (parent == node) {
            parent = succ;
        } else {
            if (child != Py_None)
                rb_set(child, rb_layout.parent, parent);
            rb_set(parent, rb_layout.left, child);
            rb_set(succ, rb_layout.right, right);
            rb_set(right, rb_layout.parent, succ);
        }
        rb_set(succ, rb_layout.parent, above);
        rb_set(succ, rb_layout.red, rb_get(node, rb_layout.red));
        rb_set(succ, rb_layout.left, left);
        rb_set(left, rb_layout.parent, succ);
    } else {
        /* At most one child: splice the node out. */
        child = left != Py_None ? left : right;
        parent = above;
        if ((lost_black = rb_is_black(node)) < 0)
            goto error;
        if (child != Py_None)
            rb_set(child, rb_layout.parent, parent);
        rb_change_child(node, child, parent, root);
    }
    rb_set(node, rb_layout.parent, Py_None);
    rb_set(node, rb_layout.left, Py_None);
    rb_set(node, rb_layout.right, Py_None);
    rc = lost_black ? rb_erase_color_c(child, parent, root) : 0;
    Py_DECREF(right);
    Py_DECREF(left);
    Py_DECREF(node);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
error:
    Py_DECREF(right);
    Py_DECREF(left);
    Py_DECREF(node);
    return NULL;
}

/* --- end of rb_erase (speed-merge2) --- */


/* ---------------------------------------------------------------------------
 * scan_ptes(ksm, mm_slot, table, idx, address, stop, smart[, allow]): the pte loop of
 * Ksm._scan_mm over one pte table, with smart scan's should_skip_rmap_item(),
 * as Ksm._scan_ptes in ksm.py does it, step for step; Ksm.get_next_rmap_item()
 * and Ksm.remove_rmap_item_from_tree() are called back where that code calls
 * them.  Returns (address, idx, visited, rmap_item or None, page or None).
 * With allow >= 0 (first_visit) it also allocates new items itself and takes
 * up to allow pages through their whole ksm_do_scan() step (visit_page()),
 * counting them in ksm_pages_scanned as that step does.
 * ------------------------------------------------------------------------- */

typedef struct {
    int ready;
    PyTypeObject *item_type, *slot_type, *scan_type, *page_type;
    Py_ssize_t it_address, it_age, it_skips, it_rmap_list;
    Py_ssize_t sl_rmap_list, sc_rmap_list;
    Py_ssize_t pg_count, pg_mapping_flags;
    unsigned long long present_mask, present;
    long page_shift, mapping_anon, mapping_flags, u8_max;
    unsigned long long page_mask;
    long tree_flags;
    PyObject *s_ksm_scan, *s_mem_map, *s_smart, *s_skipped, *s_get_next, *s_remove;
} scan_layout_t;

static scan_layout_t scan_layout;

PyDoc_STRVAR(scan_setup_doc,
"scan_setup(item, slot, scan, page, descriptors..., constants..., /)\n"
"--\n"
"\n"
"Tell scan_ptes the classes, slot descriptors and constants it works with.");

static PyObject *
speedups_scan_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    scan_layout_t l;
    (void)module;
    if (setup_head("scan_setup", args, nargs, 20, 4) < 0)
        return NULL;
    l.item_type = (PyTypeObject *)args[0];
    l.slot_type = (PyTypeObject *)args[1];
    l.scan_type = (PyTypeObject *)args[2];
    l.page_type = (PyTypeObject *)args[3];
    if ((l.it_address = slot_offset(args[4], l.item_type)) < 0 ||
        (l.it_age = slot_offset(args[5], l.item_type)) < 0 ||
        (l.it_skips = slot_offset(args[6], l.item_type)) < 0 ||
        (l.it_rmap_list = slot_offset(args[7], l.item_type)) < 0 ||
        (l.sl_rmap_list = slot_offset(args[8], l.slot_type)) < 0 ||
        (l.sc_rmap_list = slot_offset(args[9], l.scan_type)) < 0 ||
        (l.pg_count = slot_offset(args[10], l.page_type)) < 0 ||
        (l.pg_mapping_flags = slot_offset(args[11], l.page_type)) < 0)
        return NULL;
    l.present_mask = PyLong_AsUnsignedLongLong(args[12]);
    l.present = PyLong_AsUnsignedLongLong(args[13]);
    l.page_shift = PyLong_AsLong(args[14]);
    l.mapping_anon = PyLong_AsLong(args[15]);
    l.mapping_flags = PyLong_AsLong(args[16]);
    l.u8_max = PyLong_AsLong(args[17]);
    l.page_mask = PyLong_AsUnsignedLongLong(args[18]);
    l.tree_flags = PyLong_AsLong(args[19]);
    if (PyErr_Occurred())
        return NULL;
    if (!(l.s_ksm_scan = PyUnicode_InternFromString("ksm_scan")) ||
        !(l.s_mem_map = PyUnicode_InternFromString("_mem_map")) ||
        !(l.s_smart = PyUnicode_InternFromString("ksm_smart_scan")) ||
        !(l.s_skipped = PyUnicode_InternFromString("ksm_pages_skipped")) ||
        !(l.s_get_next = PyUnicode_InternFromString("get_next_rmap_item")) ||
        !(l.s_remove = PyUnicode_InternFromString("remove_rmap_item_from_tree")))
        return NULL;
    Py_INCREF(l.item_type);
    Py_INCREF(l.slot_type);
    Py_INCREF(l.scan_type);
    Py_INCREF(l.page_type);
    l.ready = 1;
    scan_layout = l;
    Py_RETURN_NONE;
}

/* Read an int slot as a long (-1 with an error set on failure: check PyErr_Occurred). */
static inline long
scan_long(PyObject *obj, Py_ssize_t off, int *err)
{
    PyObject *v = *(PyObject **)((char *)obj + off);
    long x;
    if (v == NULL || !PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "scan_ptes: an int slot holds no int");
        *err = 1;
        return -1;
    }
    x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred())
        *err = 1;
    return x;
}

/* Store a long in an int slot. */
static inline int
scan_set_long(PyObject *obj, Py_ssize_t off, long x)
{
    PyObject *v = PyLong_FromLong(x);
    PyObject **slot = (PyObject **)((char *)obj + off);
    PyObject *old;
    if (v == NULL)
        return -1;
    old = *slot;
    *slot = v;
    Py_XDECREF(old);
    return 0;
}

/* Store an object in a slot. */
static inline void
scan_set(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    PyObject **slot = (PyObject **)((char *)obj + off);
    PyObject *old = *slot;
    Py_INCREF(v);
    *slot = v;
    Py_XDECREF(old);
}

/* The rmap_list slot of a link (a slot or an item), borrowed; NULL with an error. */
static inline PyObject *
link_next(PyObject *link)
{
    PyObject *v;
    if (PyObject_TypeCheck(link, scan_layout.item_type))
        v = *(PyObject **)((char *)link + scan_layout.it_rmap_list);
    else if (PyObject_TypeCheck(link, scan_layout.slot_type))
        v = *(PyObject **)((char *)link + scan_layout.sl_rmap_list);
    else {
        PyErr_SetString(PyExc_TypeError, "scan_ptes: a link that is neither slot nor item");
        return NULL;
    }
    if (v == NULL)
        PyErr_SetString(PyExc_AttributeError, "scan_ptes: unset rmap_list");
    return v;
}

static long
skip_age_c(long age)
{
    if (age <= 3)
        return 1;
    if (age <= 5)
        return 2;
    if (age <= 8)
        return 4;
    return 8;
}

/* should_skip_rmap_item() once its first test has passed: 1 skip, 0 not, -1 error. */
static int
scan_should_skip(PyObject *ksm, PyObject *item)
{
    int err = 0;
    long age, skips, skipped, address;
    PyObject *v, *r;
    age = scan_long(item, scan_layout.it_age, &err);
    if (err)
        return -1;
    if (age != scan_layout.u8_max && scan_set_long(item, scan_layout.it_age, age + 1) < 0)
        return -1;
    if (age < 3)
        return 0;
    skips = scan_long(item, scan_layout.it_skips, &err);
    if (err)
        return -1;
    if (!skips) {
        if (scan_set_long(item, scan_layout.it_skips, skip_age_c(age)) < 0)
            return -1;
        return 0;
    }
    v = PyObject_GetAttr(ksm, scan_layout.s_skipped);
    if (v == NULL)
        return -1;
    skipped = PyLong_AsLong(v);
    Py_DECREF(v);
    if (skipped == -1 && PyErr_Occurred())
        return -1;
    v = PyLong_FromLong(skipped + 1);
    if (v == NULL || PyObject_SetAttr(ksm, scan_layout.s_skipped, v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    if (scan_set_long(item, scan_layout.it_skips, skips - 1) < 0)
        return -1;
    address = scan_long(item, scan_layout.it_address, &err);
    if (err)
        return -1;
    if (address & scan_layout.tree_flags) {
        /* remove_rmap_item_from_tree() does nothing to an item in no tree. */
        r = PyObject_CallMethodOneArg(ksm, scan_layout.s_remove, item);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 1;
}

static inline long pb_long(PyObject *v, int *err);
static inline int pb_set(PyObject **field, long x);

/* ---------------------------------------------------------------------------
 * The first_visit shortcut of scan_ptes (Ksm._scan_mm): get_next_rmap_item()'s
 * allocation of a new item where it prunes nothing, and the whole of a
 * ksm_do_scan() step for a page whose checksum has changed since its item's
 * last visit (nothing but the checksum and its bookkeeping happens then).
 * ------------------------------------------------------------------------- */

typedef struct {
    int ready;
    PyTypeObject *work_type, *mm_type;
    Py_ssize_t it_parent, it_left, it_right, it_red, it_mm, it_oldcsum, it_anon_vma;
    Py_ssize_t it_head, it_hnext, it_hprev, it_tree_page;
    Py_ssize_t wk_scanned, wk_checksums, wk_items, mm_rmap_items;
    long ksm_flags;
    PyObject *s_work, *s_mm, *s_rmap_items, *s_pages_scanned, *s_content, *s_calc;
    PyObject *s_merge, *s_root, *s_rb_node, *s_put_page;
    PyObject *s_map_generation, *s_unstable_gen, *s_ksm_scan, *s_seqnr, *s_unstable_root;
    PyObject *s_unshared, *s_checksum_first;
    Py_ssize_t wk_memcmps;
    long unstable_flag, seqnr_mask, stable_flag;
} visit_layout_t;

static visit_layout_t visit_layout;

PyDoc_STRVAR(visit_setup_doc,
"visit_setup(work, mm, descriptors..., ksm_flags, /)\n"
"--\n"
"\n"
"Tell scan_ptes's first_visit shortcut the slots of new items and the counters.");

static PyObject *
speedups_visit_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    visit_layout_t l;
    (void)module;
    if (!scan_layout.ready) {
        PyErr_SetString(PyExc_RuntimeError, "visit_setup() before scan_setup()");
        return NULL;
    }
    if (setup_head("visit_setup", args, nargs, 22, 2) < 0)
        return NULL;
    l.work_type = (PyTypeObject *)args[0];
    l.mm_type = (PyTypeObject *)args[1];
    if ((l.it_parent = slot_offset(args[2], scan_layout.item_type)) < 0 ||
        (l.it_left = slot_offset(args[3], scan_layout.item_type)) < 0 ||
        (l.it_right = slot_offset(args[4], scan_layout.item_type)) < 0 ||
        (l.it_red = slot_offset(args[5], scan_layout.item_type)) < 0 ||
        (l.it_mm = slot_offset(args[6], scan_layout.item_type)) < 0 ||
        (l.it_oldcsum = slot_offset(args[7], scan_layout.item_type)) < 0 ||
        (l.it_anon_vma = slot_offset(args[8], scan_layout.item_type)) < 0 ||
        (l.it_head = slot_offset(args[9], scan_layout.item_type)) < 0 ||
        (l.it_hnext = slot_offset(args[10], scan_layout.item_type)) < 0 ||
        (l.it_hprev = slot_offset(args[11], scan_layout.item_type)) < 0 ||
        (l.it_tree_page = slot_offset(args[12], scan_layout.item_type)) < 0 ||
        (l.wk_scanned = slot_offset(args[13], l.work_type)) < 0 ||
        (l.wk_checksums = slot_offset(args[14], l.work_type)) < 0 ||
        (l.wk_items = slot_offset(args[15], l.work_type)) < 0 ||
        (l.mm_rmap_items = slot_offset(args[16], l.mm_type)) < 0 ||
        (l.wk_memcmps = slot_offset(args[18], l.work_type)) < 0)
        return NULL;
    l.ksm_flags = PyLong_AsLong(args[17]);
    if (PyErr_Occurred())
        return NULL;
    if (!(l.s_work = PyUnicode_InternFromString("work")) ||
        !(l.s_mm = PyUnicode_InternFromString("mm")) ||
        !(l.s_rmap_items = PyUnicode_InternFromString("ksm_rmap_items")) ||
        !(l.s_pages_scanned = PyUnicode_InternFromString("ksm_pages_scanned")) ||
        !(l.s_content = PyUnicode_InternFromString("_content_checksum")) ||
        !(l.s_calc = PyUnicode_InternFromString("_calc")) ||
        !(l.s_merge = PyUnicode_InternFromString("_visit_merge")) ||
        !(l.s_root = PyUnicode_InternFromString("root_stable_tree")) ||
        !(l.s_rb_node = PyUnicode_InternFromString("rb_node")) ||
        !(l.s_put_page = PyUnicode_InternFromString("put_page")) ||
        !(l.s_map_generation = PyUnicode_InternFromString("map_generation")) ||
        !(l.s_unstable_gen = PyUnicode_InternFromString("_unstable_generation")) ||
        !(l.s_ksm_scan = PyUnicode_InternFromString("ksm_scan")) ||
        !(l.s_seqnr = PyUnicode_InternFromString("seqnr")) ||
        !(l.s_unstable_root = PyUnicode_InternFromString("root_unstable_tree")) ||
        !(l.s_unshared = PyUnicode_InternFromString("ksm_pages_unshared")) ||
        !(l.s_checksum_first = PyUnicode_InternFromString("_checksum_first")))
        return NULL;
    l.unstable_flag = PyLong_AsLong(args[19]);
    l.seqnr_mask = PyLong_AsLong(args[20]);
    l.stable_flag = PyLong_AsLong(args[21]);
    if (PyErr_Occurred())
        return NULL;
    Py_INCREF(l.work_type);
    Py_INCREF(l.mm_type);
    l.ready = 1;
    visit_layout = l;
    Py_RETURN_NONE;
}

/* What a scan_ptes call with first_visit on carries from page to page. */
typedef struct {
    PyObject *ksm, *mm_slot, *work, *mm, *calc;
    PyObject *merge;            /* ksm._visit_merge: None, or what the merge step needs */
    PyObject *root;             /* the stable tree (an RbRoot), when merge is set */
    PyObject *unstable;         /* the unstable tree (an RbRoot) while its shortcut holds */
    long seq_flags;             /* what an item inserted into it gets in its address */
    long seqnr;                 /* ksm_scan.seqnr */
    PyObject *memo_data, *memo_csum;    /* the last contents checksummed, and the sum */
    int checksum_first;         /* ksm._checksum_first */
    int content, ready;
    long allow, allocated, scanned;
} visit_ctx;

static PyObject *speedups_stable_find(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *speedups_merge_fused(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *speedups_free_scanned(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *speedups_unstable_skip(PyObject *, PyObject *const *, Py_ssize_t);
static PyObject *speedups_rb_insert_color(PyObject *, PyObject *const *, Py_ssize_t);

/* Look up, once a call needs them, the objects the shortcut works with: 0, or -1 on error. */
static int
visit_ctx_ready(visit_ctx *ctx)
{
    PyObject *content;
    if (ctx->ready)
        return 0;
    ctx->work = PyObject_GetAttr(ctx->ksm, visit_layout.s_work);
    ctx->mm = PyObject_GetAttr(ctx->mm_slot, visit_layout.s_mm);
    ctx->calc = PyObject_GetAttr(ctx->ksm, visit_layout.s_calc);
    content = PyObject_GetAttr(ctx->ksm, visit_layout.s_content);
    if (ctx->work == NULL || ctx->mm == NULL || ctx->calc == NULL || content == NULL) {
        Py_XDECREF(content);
        return -1;
    }
    ctx->content = PyObject_IsTrue(content);
    Py_DECREF(content);
    if (ctx->content < 0)
        return -1;
    {
        PyObject *scan = PyObject_GetAttr(ctx->ksm, visit_layout.s_ksm_scan);
        PyObject *seqnr = scan ? PyObject_GetAttr(scan, visit_layout.s_seqnr) : NULL;
        Py_XDECREF(scan);
        if (seqnr == NULL)
            return -1;
        ctx->seqnr = PyLong_AsLong(seqnr);
        Py_DECREF(seqnr);
        if (ctx->seqnr == -1 && PyErr_Occurred())
            return -1;
    }
    {
        PyObject *cf = PyObject_GetAttr(ctx->ksm, visit_layout.s_checksum_first);
        if (cf == NULL)
            return -1;
        ctx->checksum_first = PyObject_IsTrue(cf);
        Py_DECREF(cf);
        if (ctx->checksum_first < 0)
            return -1;
    }
    ctx->merge = PyObject_GetAttr(ctx->ksm, visit_layout.s_merge);
    if (ctx->merge == NULL)
        return -1;
    if (ctx->merge != Py_None) {
        PyObject *tree;
        if (!PyTuple_Check(ctx->merge) || PyTuple_GET_SIZE(ctx->merge) != 9) {
            PyErr_SetString(PyExc_TypeError, "scan_ptes: ksm._visit_merge is not a 9-tuple");
            return -1;
        }
        /* The stable tree (an RbRoot): its root node is read at each page, as a call back
         * into the exact path (get_next_rmap_item(), smart scan's skip) may change it. */
        tree = PyObject_GetAttr(ctx->ksm, visit_layout.s_root);
        if (tree == NULL)
            return -1;
        if (!rb_layout.ready || !PyObject_TypeCheck(tree, rb_layout.root_type)) {
            Py_DECREF(tree);
            PyErr_SetString(PyExc_TypeError, "scan_ptes: root_stable_tree");
            return -1;
        }
        ctx->root = tree;
        if (PyObject_IsTrue(PyTuple_GET_ITEM(ctx->merge, 8)) == 1) {
            /* unstable_skip holds while no pte changed what it maps since the tree was
             * emptied: the zone's map_generation still the one recorded then. */
            PyObject *gen = PyObject_GetAttr(PyTuple_GET_ITEM(ctx->merge, 6),
                                             visit_layout.s_map_generation);
            PyObject *mine = gen ? PyObject_GetAttr(ctx->ksm, visit_layout.s_unstable_gen) : NULL;
            int same = mine ? PyObject_RichCompareBool(gen, mine, Py_EQ) : -1;
            long seq = ctx->seqnr;
            Py_XDECREF(gen);
            Py_XDECREF(mine);
            if (same < 0)
                return -1;
            if (same) {
                ctx->unstable = PyObject_GetAttr(ctx->ksm, visit_layout.s_unstable_root);
                if (ctx->unstable == NULL)
                    return -1;
                if (!rb_layout.ready || !PyObject_TypeCheck(ctx->unstable, rb_layout.root_type)) {
                    PyErr_SetString(PyExc_TypeError, "scan_ptes: root_unstable_tree");
                    return -1;
                }
                ctx->seq_flags = visit_layout.unstable_flag | (seq & visit_layout.seqnr_mask);
            }
        }
    }
    if (!PyObject_TypeCheck(ctx->work, visit_layout.work_type) ||
        !PyObject_TypeCheck(ctx->mm, visit_layout.mm_type)) {
        PyErr_SetString(PyExc_TypeError, "scan_ptes: ksm.work or mm_slot.mm of the wrong type");
        return -1;
    }
    ctx->ready = 1;
    return 0;
}

/* Add delta to an int attribute of an ordinary object. */
static int
visit_attr_add(PyObject *obj, PyObject *name, long delta)
{
    PyObject *v, *w;
    long x;
    int r;
    if (delta == 0)
        return 0;
    v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    x = PyLong_AsLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    w = PyLong_FromLong(x + delta);
    if (w == NULL)
        return -1;
    r = PyObject_SetAttr(obj, name, w);
    Py_DECREF(w);
    return r;
}

/* Add delta to an int slot. */
static inline int
visit_slot_add(PyObject *obj, Py_ssize_t off, long delta)
{
    int err = 0;
    long x = scan_long(obj, off, &err);
    if (err)
        return -1;
    return scan_set_long(obj, off, x + delta);
}

/* Store a link's rmap_list slot (a slot or an item). */
static inline void
link_set_next(PyObject *link, PyObject *v)
{
    if (PyObject_TypeCheck(link, scan_layout.item_type))
        scan_set(link, scan_layout.it_rmap_list, v);
    else
        scan_set(link, scan_layout.sl_rmap_list, v);
}

/* alloc_rmap_item() and the linking get_next_rmap_item() does after it: a new item for
 * address after link, counted (ksm's own count is added when the call returns).  A new
 * reference, or NULL with an error set. */
static PyObject *
visit_alloc_item(visit_ctx *ctx, PyObject *link, PyObject *next, unsigned long long address)
{
    PyTypeObject *t = scan_layout.item_type;
    PyObject *o, *addr, *zero;
    if (visit_ctx_ready(ctx) < 0)
        return NULL;
    addr = PyLong_FromUnsignedLongLong(address);
    if (addr == NULL)
        return NULL;
    o = t->tp_alloc(t, 0);
    if (o == NULL) {
        Py_DECREF(addr);
        return NULL;
    }
    zero = PyLong_FromLong(0);
    /* RmapItem.__init__(), slot by slot. */
    scan_set(o, visit_layout.it_parent, Py_None);
    scan_set(o, visit_layout.it_left, Py_None);
    scan_set(o, visit_layout.it_right, Py_None);
    scan_set(o, visit_layout.it_red, Py_False);
    scan_set(o, visit_layout.it_mm, ctx->mm);
    scan_set(o, scan_layout.it_address, addr);
    scan_set(o, visit_layout.it_oldcsum, zero);
    scan_set(o, scan_layout.it_rmap_list, Py_None);
    scan_set(o, visit_layout.it_anon_vma, Py_None);
    scan_set(o, visit_layout.it_head, Py_None);
    scan_set(o, visit_layout.it_hnext, Py_None);
    scan_set(o, visit_layout.it_hprev, Py_None);
    scan_set(o, scan_layout.it_age, zero);
    scan_set(o, scan_layout.it_skips, zero);
    scan_set(o, visit_layout.it_tree_page, Py_None);
    Py_DECREF(zero);
    Py_DECREF(addr);
    if (visit_slot_add(ctx->mm, visit_layout.mm_rmap_items, 1) < 0 ||
        visit_slot_add(ctx->work, visit_layout.wk_items, 1) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    ctx->allocated++;
    scan_set(o, scan_layout.it_rmap_list, next);
    link_set_next(link, o);
    return o;
}

/* The rest of a ksm_do_scan() step for a page found with its item, when cmp_and_merge_page()
 * would only note a changed checksum: 1 when done (the page's reference dropped), 0 when the
 * exact path must go on (the checksum, if computed, left in the frame's cache, where
 * cmp_and_merge_page() finds it), 2 as 0 when the checksum is unchanged (the page is not KSM,
 * its item in no tree: visit_merge() may take it), -1 on error. */
static int
visit_page(visit_ctx *ctx, PyObject *item, PyObject *page_obj)
{
    PageBaseObject *page = (PageBaseObject *)page_obj;
    PyObject *data, *csum, *old;
    long flags, count, address;
    int err = 0, eq;
    flags = pb_long(page->mapping_flags, &err);
    count = err ? 0 : pb_long(page->count, &err);
    address = err ? 0 : scan_long(item, scan_layout.it_address, &err);
    if (err)
        return -1;
    if (count <= 1)
        return 0;
    if (flags == visit_layout.ksm_flags) {
        /* A KSM page: ksm_do_scan() leaves it alone when it is on its item's node (6.11+:
         * cmp_and_merge_page() would return at once), or its item is stable (before). */
        int skip;
        if (visit_ctx_ready(ctx) < 0)
            return -1;
        if (ctx->checksum_first)
            skip = page->mapping != Py_None &&
                   *(PyObject **)((char *)item + visit_layout.it_head) == page->mapping;
        else
            skip = (address & visit_layout.stable_flag) != 0;
        if (!skip)
            return 0;
        if (visit_slot_add(ctx->work, visit_layout.wk_scanned, 1) < 0 ||
            pb_set(&page->count, count - 1) < 0)
            return -1;
        ctx->scanned++;
        return 1;
    }
    data = page->data;
    if (data == NULL || data == Py_None)
        return 0;
    if (visit_ctx_ready(ctx) < 0)
        return -1;
    if (address & scan_layout.tree_flags) {
        /* remove_rmap_item_from_tree(), cmp_and_merge_page()'s first step for this page,
         * for an item the unstable tree held in the last pass (emptied since): uncount it
         * and clear its flags.  A stable item, or one of this pass: the exact path. */
        if ((address & visit_layout.stable_flag) || !(address & visit_layout.unstable_flag) ||
            ((ctx->seqnr - address) & visit_layout.seqnr_mask) != 1)
            return 0;
        if (visit_attr_add(ctx->ksm, visit_layout.s_unshared, -1) < 0 ||
            scan_set_long(item, scan_layout.it_address,
                          (long)((unsigned long long)address & scan_layout.page_mask)) < 0)
            return -1;
        scan_set(item, visit_layout.it_tree_page, Py_None);
    }
    /* calc_checksum(), with the frame's cache and content_checksum; counted at every call,
     * as Ksm.calc_checksum() counts it. */
    if (visit_slot_add(ctx->work, visit_layout.wk_checksums, 1) < 0)
        return -1;
    if (page->csum_of == data && page->csum != NULL) {
        csum = page->csum;
        Py_INCREF(csum);
    } else {
        if (ctx->content && Py_IS_TYPE(data, &PageText_Type)) {
            csum = pagetext_checksum((PageTextObject *)data, ctx->calc);
        } else if (data == ctx->memo_data) {
            /* The same immutable contents object as the last page's: the same checksum
             * (calc is a function of the contents), counted all the same. */
            csum = ctx->memo_csum;
            Py_INCREF(csum);
        } else {
            csum = PyObject_CallOneArg(ctx->calc, data);
            if (csum != NULL && (PyBytes_CheckExact(data) || Py_IS_TYPE(data, &PageText_Type))) {
                Py_INCREF(data);
                Py_XSETREF(ctx->memo_data, data);
                Py_INCREF(csum);
                Py_XSETREF(ctx->memo_csum, csum);
            }
        }
        if (csum == NULL)
            return -1;
        Py_INCREF(csum);
        Py_XSETREF(page->csum, csum);
        Py_INCREF(data);
        Py_XSETREF(page->csum_of, data);
    }
    old = *(PyObject **)((char *)item + visit_layout.it_oldcsum);
    if (old == NULL) {
        Py_DECREF(csum);
        PyErr_SetString(PyExc_AttributeError, "scan_ptes: unset oldchecksum");
        return -1;
    }
    eq = PyObject_RichCompareBool(old, csum, Py_EQ);
    if (eq != 0) {
        Py_DECREF(csum);
        return eq < 0 ? -1 : 2;
    }
    scan_set(item, visit_layout.it_oldcsum, csum);
    Py_DECREF(csum);
    /* ksm_do_scan(): the page counted as scanned and its reference dropped. */
    if (visit_slot_add(ctx->work, visit_layout.wk_scanned, 1) < 0 ||
        pb_set(&page->count, count - 1) < 0)
        return -1;
    ctx->scanned++;
    return 1;
}

/* The rest of a ksm_do_scan() step for a page whose checksum is unchanged and that the
 * stable tree search did not find (after n compares), when unstable_tree_search_insert()
 * inserts it (its unstable_skip walk meets no equal page and ends at a leaf): the item is
 * linked in with its flags and recorded page, coloured, counted, and the page's reference
 * dropped (not the last: the page is mapped).  Nothing changes when the walk meets an equal
 * page or a node with no recorded page (the exact path runs).  1 when done, 0 if not, -1 on
 * error. */
static int
visit_insert(visit_ctx *ctx, PyObject *item, PyObject *page_obj, Py_ssize_t n)
{
    PageBaseObject *page = (PageBaseObject *)page_obj;
    PyObject *t, *node, *parent, *a[2], *r;
    Py_ssize_t n2;
    long address, count;
    int left, err = 0;
    if (ctx->unstable == NULL)
        return 0;
    {
        /* The unstable_skip shortcut's condition, again: a call back into the exact path
         * during this call could have moved map_generation. */
        PyObject *gen = PyObject_GetAttr(PyTuple_GET_ITEM(ctx->merge, 6),
                                         visit_layout.s_map_generation);
        PyObject *mine = gen ? PyObject_GetAttr(ctx->ksm, visit_layout.s_unstable_gen) : NULL;
        int same = mine ? PyObject_RichCompareBool(gen, mine, Py_EQ) : -1;
        Py_XDECREF(gen);
        Py_XDECREF(mine);
        if (same <= 0)
            return same;
    }
    a[0] = rb_get(ctx->unstable, rb_layout.root_node);
    a[1] = page->data;
    t = speedups_unstable_skip(NULL, a, 2);
    if (t == NULL)
        return -1;
    node = PyTuple_GET_ITEM(t, 0);
    if (node != Py_None) {
        Py_DECREF(t);
        return 0;
    }
    parent = PyTuple_GET_ITEM(t, 1);
    left = PyTuple_GET_ITEM(t, 2) == Py_True;
    n2 = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 3));
    address = scan_long(item, scan_layout.it_address, &err);
    count = err ? 0 : pb_long(page->count, &err);
    if (err || (n2 == -1 && PyErr_Occurred())) {
        Py_DECREF(t);
        return -1;
    }
    if (visit_slot_add(ctx->work, visit_layout.wk_memcmps, (long)(n + n2)) < 0 ||
        scan_set_long(item, scan_layout.it_address, address | ctx->seq_flags) < 0) {
        Py_DECREF(t);
        return -1;
    }
    scan_set(item, visit_layout.it_tree_page, page_obj);
    /* rb_link_node() */
    rb_set(item, rb_layout.parent, parent);
    rb_set(item, rb_layout.left, Py_None);
    rb_set(item, rb_layout.right, Py_None);
    rb_set(item, rb_layout.red, Py_True);
    if (parent == Py_None)
        rb_set(ctx->unstable, rb_layout.root_node, item);
    else
        rb_set(parent, left ? rb_layout.left : rb_layout.right, item);
    Py_DECREF(t);
    a[0] = item;
    a[1] = ctx->unstable;
    r = speedups_rb_insert_color(NULL, a, 2);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    if (visit_attr_add(ctx->ksm, visit_layout.s_unshared, 1) < 0)
        return -1;
    /* ksm_do_scan(): the page counted as scanned and the scan's reference dropped. */
    if (visit_slot_add(ctx->work, visit_layout.wk_scanned, 1) < 0 ||
        pb_set(&page->count, count - 1) < 0)
        return -1;
    ctx->scanned++;
    return 1;
}

/* The rest of a ksm_do_scan() step for a page whose checksum is unchanged (visit_page()
 * gave 2), with the checksum tested first (6.11+), when it merges into the KSM page the
 * stable tree search takes at once (stable_find()) through the fused merge (merge_fused()):
 * cmp_and_merge_page()'s other steps change nothing then (no zero page is tried, the item is
 * in no tree).  The compares of the walk are counted and the search's reference taken only
 * when the merge is made; otherwise nothing has changed and the exact path runs.  Then the
 * page's reference is dropped as ksm_do_scan() drops it.  1 when done, 0 if not, -1 on error.
 * ksm._visit_merge is (chains, pinned, max_page_sharing, prune floor, zero checksum or None,
 * free_scanned's arguments after the page or (), the zone, free_scanned or None, whether
 * the unstable_skip shortcut is on).  A page the search does not find may go on to
 * visit_insert(). */
static int
visit_merge(visit_ctx *ctx, PyObject *item, PyObject *page_obj)
{
    PageBaseObject *page = (PageBaseObject *)page_obj;
    PyObject *m = ctx->merge, *t, *hit, *r, *zero, *fargs[6], *margs[4];
    PyObject *free_args, *free_fn;
    Py_ssize_t n;
    long count;
    int err = 0;
    if (m == NULL || m == Py_None || ctx->root == NULL)
        return 0;
    zero = PyTuple_GET_ITEM(m, 4);
    if (zero != Py_None) {
        /* try_to_merge_with_zero_page() would try the zero page for this checksum. */
        PyObject *old = *(PyObject **)((char *)item + visit_layout.it_oldcsum);
        int eq = PyObject_RichCompareBool(old, zero, Py_EQ);
        if (eq != 0)
            return eq < 0 ? -1 : 0;
    }
    fargs[0] = rb_get(ctx->root, rb_layout.root_node);
    if (fargs[0] == Py_None)
        /* An empty stable tree: the search returns at once. */
        return visit_insert(ctx, item, page_obj, 0);
    fargs[1] = page->data;
    fargs[2] = PyTuple_GET_ITEM(m, 1);
    fargs[3] = PyTuple_GET_ITEM(m, 0);
    fargs[4] = PyTuple_GET_ITEM(m, 2);
    fargs[5] = PyTuple_GET_ITEM(m, 3);
    t = speedups_stable_find(NULL, fargs, 6);
    if (t == NULL)
        return -1;
    hit = PyTuple_GET_ITEM(t, 0);
    if (hit == Py_None) {
        int r2 = 0;
        if (PyTuple_GET_ITEM(t, 1) == Py_None) {
            /* The search found nothing: unstable_tree_search_insert() comes next. */
            n = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 2));
            r2 = (n == -1 && PyErr_Occurred()) ? -1 : visit_insert(ctx, item, page_obj, n);
        }
        Py_DECREF(t);
        return r2;
    }
    n = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 2));
    Py_INCREF(hit);
    Py_DECREF(t);
    if (n == -1 && PyErr_Occurred())
        goto error;
    margs[0] = ctx->ksm;
    margs[1] = item;
    margs[2] = page_obj;
    margs[3] = hit;
    r = speedups_merge_fused(NULL, margs, 4);
    if (r == NULL)
        goto error;
    Py_DECREF(r);
    if (r == Py_False) {
        /* No merge: give the search's reference back; the exact path searches again. */
        count = pb_long(((PageBaseObject *)hit)->count, &err);
        if (err || pb_set(&((PageBaseObject *)hit)->count, count - 1) < 0)
            goto error;
        Py_DECREF(hit);
        return 0;
    }
    Py_DECREF(hit);
    if (visit_slot_add(ctx->work, visit_layout.wk_memcmps, (long)n) < 0 ||
        visit_slot_add(ctx->work, visit_layout.wk_scanned, 1) < 0)
        return -1;
    /* ksm_do_scan(): drop the scan's reference, freeing the page if it was the last. */
    count = pb_long(page->count, &err);
    if (err)
        return -1;
    if (count > 1) {
        if (pb_set(&page->count, count - 1) < 0)
            return -1;
    } else {
        free_args = PyTuple_GET_ITEM(m, 5);
        free_fn = PyTuple_GET_ITEM(m, 7);
        r = NULL;
        if (free_fn != Py_None && PyTuple_GET_SIZE(free_args) == 9) {
            PyObject *a[10];
            Py_ssize_t i;
            a[0] = page_obj;
            for (i = 0; i < 9; i++)
                a[i + 1] = PyTuple_GET_ITEM(free_args, i);
            r = PyObject_Vectorcall(free_fn, a, 10, NULL);
            if (r == NULL)
                return -1;
        }
        if (r != Py_True) {
            PyObject *put;
            Py_XDECREF(r);
            put = PyObject_CallMethodOneArg(PyTuple_GET_ITEM(m, 6), visit_layout.s_put_page,
                                            page_obj);
            if (put == NULL)
                return -1;
            Py_DECREF(put);
        } else {
            Py_DECREF(r);
        }
    }
    ctx->scanned++;
    return 1;
error:
    Py_DECREF(hit);
    return -1;
}

/* Add the counts kept during a call to ksm's attributes. */
static int
visit_flush(visit_ctx *ctx)
{
    if (visit_attr_add(ctx->ksm, visit_layout.s_rmap_items, ctx->allocated) < 0 ||
        visit_attr_add(ctx->ksm, visit_layout.s_pages_scanned, ctx->scanned) < 0)
        return -1;
    ctx->allocated = ctx->scanned = 0;
    return 0;
}

PyDoc_STRVAR(scan_ptes_doc,
"scan_ptes(ksm, mm_slot, table, idx, address, stop, smart, allow=-1, /)\n"
"--\n"
"\n"
"The pte loop of Ksm._scan_mm over one pte table, as Ksm._scan_ptes; with\n"
"allow >= 0, the first_visit shortcut too (up to allow pages consumed).");

static PyObject *
speedups_scan_ptes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ksm, *mm_slot, *table, *scan = NULL, *mem_map = NULL, *result = NULL;
    PyObject *page, *link, *item, *addr_obj;
    Py_buffer view;
    Py_ssize_t idx, nframes;
    unsigned long long address, stop, pte;
    long visited = 0, flags, count, item_addr;
    int smart, err = 0, have_view = 0, skip;
    visit_ctx ctx;
    (void)module;
    ctx.allow = -1;
    ctx.ready = 0;
    ctx.merge = ctx.root = ctx.unstable = NULL;
    ctx.memo_data = ctx.memo_csum = NULL;
    ctx.seq_flags = 0;
    ctx.work = ctx.mm = ctx.calc = NULL;
    ctx.allocated = ctx.scanned = 0;
    if (!scan_layout.ready) {
        PyErr_SetString(PyExc_RuntimeError, "scan_ptes() before scan_setup()");
        return NULL;
    }
    if (nargs != 7 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "scan_ptes() takes 7 or 8 arguments");
        return NULL;
    }
    ctx.ksm = args[0];
    ctx.mm_slot = args[1];
    ctx.merge = ctx.root = ctx.unstable = NULL;
    ctx.memo_data = ctx.memo_csum = NULL;
    ctx.seq_flags = 0;
    ctx.work = ctx.mm = ctx.calc = NULL;
    ctx.content = ctx.ready = 0;
    ctx.allow = -1;
    ctx.allocated = ctx.scanned = 0;
    if (nargs == 8) {
        ctx.allow = PyLong_AsLong(args[7]);
        if (ctx.allow == -1 && PyErr_Occurred())
            return NULL;
        if (!visit_layout.ready || !PyType_IsSubtype(scan_layout.page_type, &PageBase_Type))
            ctx.allow = -1;
    }
    ksm = args[0];
    mm_slot = args[1];
    table = args[2];
    idx = PyLong_AsSsize_t(args[3]);
    address = PyLong_AsUnsignedLongLong(args[4]);
    stop = PyLong_AsUnsignedLongLong(args[5]);
    smart = PyObject_IsTrue(args[6]);
    if (PyErr_Occurred() || smart < 0)
        return NULL;
    if (PyObject_GetBuffer(table, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    have_view = 1;
    if (view.len % 8 != 0) {
        PyErr_SetString(PyExc_TypeError, "scan_ptes: a pte table of 64-bit entries");
        goto done;
    }
    scan = PyObject_GetAttr(ksm, scan_layout.s_ksm_scan);
    mem_map = PyObject_GetAttr(ksm, scan_layout.s_mem_map);
    if (scan == NULL || mem_map == NULL)
        goto done;
    if (!PyObject_TypeCheck(scan, scan_layout.scan_type) || !PyList_Check(mem_map)) {
        PyErr_SetString(PyExc_TypeError, "scan_ptes: ksm_scan or _mem_map of the wrong type");
        goto done;
    }
    nframes = PyList_GET_SIZE(mem_map);
    while (address < stop) {
        if (idx < 0 || idx >= view.len / 8) {
            PyErr_SetString(PyExc_IndexError, "scan_ptes: pte index out of range");
            goto done;
        }
        pte = ((const unsigned long long *)view.buf)[idx];
        visited++;
        if ((pte & scan_layout.present_mask) == scan_layout.present) {
            Py_ssize_t pfn = (Py_ssize_t)(pte >> scan_layout.page_shift);
            if (pfn >= nframes) {
                PyErr_SetString(PyExc_IndexError, "scan_ptes: pfn out of range");
                goto done;
            }
            page = PyList_GET_ITEM(mem_map, pfn);
            if (page == Py_None || !PyObject_TypeCheck(page, scan_layout.page_type)) {
                PyErr_SetString(PyExc_AssertionError, "scan_ptes: a pte maps no frame");
                goto done;
            }
            flags = scan_long(page, scan_layout.pg_mapping_flags, &err);
            if (err)
                goto done;
            if (flags & scan_layout.mapping_anon) {
                Py_INCREF(page);
                count = scan_long(page, scan_layout.pg_count, &err);
                if (err || scan_set_long(page, scan_layout.pg_count, count + 1) < 0) {
                    Py_DECREF(page);
                    goto done;
                }
                /* get_next_rmap_item(), whose common case (the next item) is inline. */
                link = *(PyObject **)((char *)scan + scan_layout.sc_rmap_list);
                if (link == NULL) {
                    PyErr_SetString(PyExc_AttributeError, "scan_ptes: unset ksm_scan.rmap_list");
                    Py_DECREF(page);
                    goto done;
                }
                Py_INCREF(link);
                item = link_next(link);
                if (item == NULL) {
                    Py_DECREF(link);
                    Py_DECREF(page);
                    goto done;
                }
                item_addr = 0;
                if (item != Py_None) {
                    item_addr = scan_long(item, scan_layout.it_address, &err);
                    if (err) {
                        Py_DECREF(link);
                        Py_DECREF(page);
                        goto done;
                    }
                }
                if (ctx.allow >= 0 &&
                    (item == Py_None ||
                     (((unsigned long long)item_addr & scan_layout.page_mask) != address &&
                      (unsigned long long)item_addr > address))) {
                    /* Shortcut first_visit: get_next_rmap_item() would prune nothing and
                     * allocate a new item here. */
                    item = visit_alloc_item(&ctx, link, item, address);
                    if (item == NULL) {
                        Py_DECREF(link);
                        Py_DECREF(page);
                        goto done;
                    }
                } else if (item == Py_None ||
                    ((unsigned long long)item_addr & scan_layout.page_mask) != address) {
                    addr_obj = PyLong_FromUnsignedLongLong(address);
                    if (addr_obj == NULL) {
                        Py_DECREF(link);
                        Py_DECREF(page);
                        goto done;
                    }
                    item = PyObject_CallMethodObjArgs(ksm, scan_layout.s_get_next, mm_slot,
                                                      link, addr_obj, NULL);
                    Py_DECREF(addr_obj);
                    if (item == NULL) {
                        Py_DECREF(link);
                        Py_DECREF(page);
                        goto done;
                    }
                } else {
                    Py_INCREF(item);
                }
                Py_DECREF(link);
                scan_set(scan, scan_layout.sc_rmap_list, item);
                address += 1ULL << scan_layout.page_shift;
                idx++;
                skip = 0;
                if (smart) {
                    PyObject *on = PyObject_GetAttr(ksm, scan_layout.s_smart);
                    int truth;
                    if (on == NULL) {
                        Py_DECREF(item);
                        Py_DECREF(page);
                        goto done;
                    }
                    truth = PyObject_IsTrue(on);
                    Py_DECREF(on);
                    if (truth < 0) {
                        Py_DECREF(item);
                        Py_DECREF(page);
                        goto done;
                    }
                    if (truth) {
                        flags = scan_long(page, scan_layout.pg_mapping_flags, &err);
                        if (err) {
                            Py_DECREF(item);
                            Py_DECREF(page);
                            goto done;
                        }
                        if (flags != scan_layout.mapping_flags) {
                            skip = scan_should_skip(ksm, item);
                            if (skip < 0) {
                                Py_DECREF(item);
                                Py_DECREF(page);
                                goto done;
                            }
                        }
                    }
                }
                if (skip) {
                    count = scan_long(page, scan_layout.pg_count, &err);
                    Py_DECREF(item);
                    if (err || scan_set_long(page, scan_layout.pg_count, count - 1) < 0) {
                        Py_DECREF(page);
                        goto done;
                    }
                    Py_DECREF(page);
                    continue;
                }
                if (ctx.allow > 0) {
                    /* Shortcut first_visit: the page's whole ksm_do_scan() step. */
                    int r = visit_page(&ctx, item, page);
                    if (r == 2) {
                        r = visit_merge(&ctx, item, page);
                        /* Not taken: the exact path's calc_checksum() counts this
                         * checksum (from the frame's cache), so this count goes. */
                        if (r == 0 && visit_slot_add(ctx.work, visit_layout.wk_checksums, -1) < 0)
                            r = -1;
                    }
                    if (r < 0) {
                        Py_DECREF(item);
                        Py_DECREF(page);
                        goto done;
                    }
                    if (r) {
                        ctx.allow--;
                        Py_DECREF(item);
                        Py_DECREF(page);
                        continue;
                    }
                }
                if (ctx.allow >= 0 && visit_flush(&ctx) < 0) {
                    Py_DECREF(item);
                    Py_DECREF(page);
                    goto done;
                }
                result = Py_BuildValue("(KnlNN)", address, idx, visited, item, page);
                goto done;
            }
        }
        address += 1ULL << scan_layout.page_shift;
        idx++;
    }
    if (ctx.allow >= 0 && visit_flush(&ctx) < 0)
        goto done;
    result = Py_BuildValue("(KnlOO)", address, idx, visited, Py_None, Py_None);
done:
    if (result == NULL && ctx.allow >= 0 && (ctx.allocated || ctx.scanned)) {
        /* Keep the counts true even on the way out with an error. */
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        if (visit_flush(&ctx) < 0)
            PyErr_Clear();
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    Py_XDECREF(ctx.work);
    Py_XDECREF(ctx.mm);
    Py_XDECREF(ctx.calc);
    Py_XDECREF(ctx.merge);
    Py_XDECREF(ctx.root);
    Py_XDECREF(ctx.unstable);
    Py_XDECREF(ctx.memo_data);
    Py_XDECREF(ctx.memo_csum);
    if (have_view)
        PyBuffer_Release(&view);
    Py_XDECREF(scan);
    Py_XDECREF(mem_map);
    return result;
}

/* ---------------------------------------------------------------------------
 * merge_fused(ksm, rmap_item, page, kpage): Ksm.merge_with_ksm_page_fused() in
 * ksm.py (shortcut fused_merge), the same tests in the same order and the
 * same changes.  Returns True when it merged, False (having changed nothing)
 * when a condition does not hold.  Frames are PageBase objects.
 * ------------------------------------------------------------------------- */

typedef struct {
    int ready;
    PyTypeObject *item_type, *mm_type, *vma_type, *anon_type, *stable_type, *work_type;
    Py_ssize_t it_mm, it_address, it_anon_vma, it_head, it_hnext, it_hprev;
    Py_ssize_t mm_users, mm_cache, mm_pgd, mm_merging;
    Py_ssize_t vm_start, vm_end, vm_flags, vm_pgoff, vm_anon_vma;
    Py_ssize_t av_refcount, sn_hlist, sn_hlist_len, wk_memcmps, wk_merges;
    long tree_flags, stable_flag;
    unsigned long long vm_mergeable, vm_locked;
    long mapping_anon, mapping_ksm, pg_locked, pg_dirty, pg_swapcache, pg_referenced;
    unsigned long long present_mask, present, pte_rw, pte_dirty, pte_accessed;
    long ptrs_per_pte, page_shift;
    PyObject *s_work, *s_machine, *s_wp_dirty, *s_sharing, *s_shared, *s_nr_anon;
    PyObject *s_fmv, *s_remove;
} merge_layout_t;

static merge_layout_t merge_layout;

PyDoc_STRVAR(merge_setup_doc,
"merge_setup(item, mm, vma, anon_vma, stable, work, descriptors..., constants..., /)\n"
"--\n"
"\n"
"Tell merge_fused the classes, slot descriptors and constants it works with.");

static PyObject *
speedups_merge_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    merge_layout_t l;
    int i;
    (void)module;
    if (setup_head("merge_setup", args, nargs, 43, 6) < 0)
        return NULL;
    l.item_type = (PyTypeObject *)args[0];
    l.mm_type = (PyTypeObject *)args[1];
    l.vma_type = (PyTypeObject *)args[2];
    l.anon_type = (PyTypeObject *)args[3];
    l.stable_type = (PyTypeObject *)args[4];
    l.work_type = (PyTypeObject *)args[5];
    if ((l.it_mm = slot_offset(args[6], l.item_type)) < 0 ||
        (l.it_address = slot_offset(args[7], l.item_type)) < 0 ||
        (l.it_anon_vma = slot_offset(args[8], l.item_type)) < 0 ||
        (l.it_head = slot_offset(args[9], l.item_type)) < 0 ||
        (l.it_hnext = slot_offset(args[10], l.item_type)) < 0 ||
        (l.it_hprev = slot_offset(args[11], l.item_type)) < 0 ||
        (l.mm_users = slot_offset(args[12], l.mm_type)) < 0 ||
        (l.mm_cache = slot_offset(args[13], l.mm_type)) < 0 ||
        (l.mm_pgd = slot_offset(args[14], l.mm_type)) < 0 ||
        (l.mm_merging = slot_offset(args[15], l.mm_type)) < 0 ||
        (l.vm_start = slot_offset(args[16], l.vma_type)) < 0 ||
        (l.vm_end = slot_offset(args[17], l.vma_type)) < 0 ||
        (l.vm_flags = slot_offset(args[18], l.vma_type)) < 0 ||
        (l.vm_pgoff = slot_offset(args[19], l.vma_type)) < 0 ||
        (l.vm_anon_vma = slot_offset(args[20], l.vma_type)) < 0 ||
        (l.av_refcount = slot_offset(args[21], l.anon_type)) < 0 ||
        (l.sn_hlist = slot_offset(args[22], l.stable_type)) < 0 ||
        (l.sn_hlist_len = slot_offset(args[23], l.stable_type)) < 0 ||
        (l.wk_memcmps = slot_offset(args[24], l.work_type)) < 0 ||
        (l.wk_merges = slot_offset(args[25], l.work_type)) < 0)
        return NULL;
    l.tree_flags = PyLong_AsLong(args[26]);
    l.stable_flag = PyLong_AsLong(args[27]);
    l.vm_mergeable = PyLong_AsUnsignedLongLong(args[28]);
    l.vm_locked = PyLong_AsUnsignedLongLong(args[29]);
    l.mapping_anon = PyLong_AsLong(args[30]);
    l.mapping_ksm = PyLong_AsLong(args[31]);
    l.pg_locked = PyLong_AsLong(args[32]);
    l.pg_dirty = PyLong_AsLong(args[33]);
    l.pg_swapcache = PyLong_AsLong(args[34]);
    l.present_mask = PyLong_AsUnsignedLongLong(args[35]);
    l.present = PyLong_AsUnsignedLongLong(args[36]);
    l.pte_rw = PyLong_AsUnsignedLongLong(args[37]);
    l.pte_dirty = PyLong_AsUnsignedLongLong(args[38]);
    l.pte_accessed = PyLong_AsUnsignedLongLong(args[39]);
    l.ptrs_per_pte = PyLong_AsLong(args[40]);
    l.page_shift = PyLong_AsLong(args[41]);
    l.pg_referenced = PyLong_AsLong(args[42]);
    if (PyErr_Occurred())
        return NULL;
    if (!(l.s_work = PyUnicode_InternFromString("work")) ||
        !(l.s_machine = PyUnicode_InternFromString("machine")) ||
        !(l.s_wp_dirty = PyUnicode_InternFromString("_wp_dirty")) ||
        !(l.s_sharing = PyUnicode_InternFromString("ksm_pages_sharing")) ||
        !(l.s_shared = PyUnicode_InternFromString("ksm_pages_shared")) ||
        !(l.s_nr_anon = PyUnicode_InternFromString("nr_anon_pages")) ||
        !(l.s_fmv = PyUnicode_InternFromString("_find_mergeable_vma")) ||
        !(l.s_remove = PyUnicode_InternFromString("remove_rmap_item_from_tree")))
        return NULL;
    for (i = 0; i < 6; i++)
        Py_INCREF(args[i]);
    l.ready = 1;
    merge_layout = l;
    Py_RETURN_NONE;
}

#define MSLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* An int field of a PageBase as a long (-1 with an error set: check *err). */
static inline long
pb_long(PyObject *v, int *err)
{
    long x;
    if (v == NULL || !PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "merge_fused: a page field holds no int");
        *err = 1;
        return -1;
    }
    x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred())
        *err = 1;
    return x;
}

/* Store a long in a PageBase field. */
static inline int
pb_set(PyObject **field, long x)
{
    PyObject *v = PyLong_FromLong(x), *old;
    if (v == NULL)
        return -1;
    old = *field;
    *field = v;
    Py_XDECREF(old);
    return 0;
}


PyDoc_STRVAR(merge_fused_doc,
"merge_fused(ksm, rmap_item, page, kpage, /)\n"
"--\n"
"\n"
"Ksm.merge_with_ksm_page_fused(): merge page into kpage in one step when the\n"
"common case's conditions hold (True), else change nothing (False).");

/* The fused merge: with stable_step, Ksm.merge_with_ksm_page_fused(); without,
 * Ksm.try_to_merge_with_ksm_page_fused() (kpage NULL: the page upgraded in place). */
static PyObject *
merge_core(PyObject *ksm, PyObject *item, PageBaseObject *page, PageBaseObject *kpage,
           int stable_step)
{
    PyObject *mm, *vma, *anon_vma, *node = NULL, *pgd, *key, *table, *work = NULL;
    PyObject *wp = NULL, *first;
    Py_buffer view;
    long address, addr, vm_start, vm_end, vm_pgoff, users, pflags, kflags, count, mapcount;
    long kmapcount, swapped;
    unsigned long long vm_flags, pte, newpte;
    Py_ssize_t idx;
    int err = 0, dirty, six, c, ok = 0;
    mm = MSLOT(item, merge_layout.it_mm);
    if (mm == NULL || !PyObject_TypeCheck(mm, merge_layout.mm_type)) {
        PyErr_SetString(PyExc_TypeError, "merge_fused: rmap_item.mm is not an mm");
        return NULL;
    }
    address = scan_long(item, merge_layout.it_address, &err);
    users = err ? 0 : scan_long(mm, merge_layout.mm_users, &err);
    if (err)
        return NULL;
    if ((stable_step && (address & merge_layout.tree_flags)) || users == 0)
        Py_RETURN_FALSE;
    addr = address & ~((1L << merge_layout.page_shift) - 1);
    vma = MSLOT(mm, merge_layout.mm_cache);
    if (vma == NULL || vma == Py_None)
        Py_RETURN_FALSE;
    if (!PyObject_TypeCheck(vma, merge_layout.vma_type)) {
        PyErr_SetString(PyExc_TypeError, "merge_fused: mmap_cache is not an area");
        return NULL;
    }
    vm_start = scan_long(vma, merge_layout.vm_start, &err);
    vm_end = err ? 0 : scan_long(vma, merge_layout.vm_end, &err);
    if (err)
        return NULL;
    if (!(vm_start <= addr && addr < vm_end))
        Py_RETURN_FALSE;
    {
        PyObject *f = MSLOT(vma, merge_layout.vm_flags);
        if (f == NULL || !PyLong_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "merge_fused: vm_flags holds no int");
            return NULL;
        }
        vm_flags = PyLong_AsUnsignedLongLong(f);
        if (vm_flags == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    anon_vma = MSLOT(vma, merge_layout.vm_anon_vma);
    if (anon_vma == NULL)
        return PyErr_Format(PyExc_AttributeError, "merge_fused: unset anon_vma");
    if ((vm_flags & (merge_layout.vm_mergeable | merge_layout.vm_locked)) !=
            merge_layout.vm_mergeable || anon_vma == Py_None)
        Py_RETURN_FALSE;
    if (kpage != NULL) {
        node = kpage->mapping;
        kflags = pb_long(kpage->flags, &err);
        c = err ? 0 : (int)pb_long(kpage->mapping_flags, &err);
        if (err)
            return NULL;
        if (page == kpage || c != merge_layout.mapping_ksm)
            Py_RETURN_FALSE;
        if (stable_step) {
            if (node == NULL || node == Py_None || (kflags & merge_layout.pg_locked))
                Py_RETURN_FALSE;
            if (!PyObject_TypeCheck(node, merge_layout.stable_type)) {
                PyErr_SetString(PyExc_TypeError,
                                "merge_fused: a KSM page's mapping is no stable node");
                return NULL;
            }
        }
    }
    c = (int)pb_long(page->mapping_flags, &err);
    pflags = err ? 0 : pb_long(page->flags, &err);
    count = err ? 0 : pb_long(page->count, &err);
    vm_pgoff = err ? 0 : scan_long(vma, merge_layout.vm_pgoff, &err);
    if (err)
        return NULL;
    if (c != merge_layout.mapping_anon || page->mapping != anon_vma ||
        (pflags & merge_layout.pg_locked) || (kpage != NULL && count < 2) ||
        vm_start + (page->index - vm_pgoff) * (1L << merge_layout.page_shift) != addr)
        Py_RETURN_FALSE;
    pgd = MSLOT(mm, merge_layout.mm_pgd);
    if (pgd == NULL || !PyDict_Check(pgd)) {
        PyErr_SetString(PyExc_TypeError, "merge_fused: mm.pgd is not a dict");
        return NULL;
    }
    key = PyLong_FromLong((addr >> merge_layout.page_shift) >> 9);
    if (key == NULL)
        return NULL;
    table = PyDict_GetItemWithError(pgd, key);
    Py_DECREF(key);
    if (table == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    if (PyObject_GetBuffer(table, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    idx = (addr >> merge_layout.page_shift) & (merge_layout.ptrs_per_pte - 1);
    if (view.len != merge_layout.ptrs_per_pte * 8) {
        PyErr_SetString(PyExc_TypeError, "merge_fused: a pte table of 512 64-bit entries");
        goto done;
    }
    pte = ((unsigned long long *)view.buf)[idx];
    if ((pte & merge_layout.present_mask) != merge_layout.present ||
        (pte >> merge_layout.page_shift) != page->pfn) {
        ok = 0;
        goto done_ok;
    }
    wp = PyObject_GetAttr(ksm, merge_layout.s_wp_dirty);
    if (wp == NULL)
        goto done;
    six = PyObject_IsTrue(wp);
    if (six < 0)
        goto done;
    dirty = six && (pte & merge_layout.pte_dirty);
    if ((pte & merge_layout.pte_rw) || dirty) {
        mapcount = pb_long(page->mapcount, &err);
        if (err)
            goto done;
        swapped = (pflags & merge_layout.pg_swapcache) ? 1 : 0;
        if (mapcount + 1 + swapped != count) {
            ok = 0;
            goto done_ok;
        }
    }
    if (kpage != NULL) {
        if (page->data == NULL || kpage->data == NULL || page->data == Py_None ||
            kpage->data == Py_None) {
            ok = 0;
            goto done_ok;
        }
        c = contents_cmp(page->data, kpage->data);
        if (c == -2)
            goto done;
        if (c != 0) {
            ok = 0;
            goto done_ok;
        }
    }
    /* Every condition holds: from here on the merge is made. */
    work = PyObject_GetAttr(ksm, merge_layout.s_work);
    if (work == NULL)
        goto done;
    if (!PyObject_TypeCheck(work, merge_layout.work_type)) {
        PyErr_SetString(PyExc_TypeError, "merge_fused: ksm.work is not a KsmWork");
        goto done;
    }
    if (dirty) {
        pflags |= merge_layout.pg_dirty;
        if (pb_set(&page->flags, pflags) < 0)
            goto done;
    }
    if (kpage == NULL) {
        /* write_protect_page()'s pte, then the upgrade in place of try_to_merge_one_page(). */
        if ((pte & merge_layout.pte_rw) || dirty) {
            newpte = pte & ~merge_layout.pte_rw;
            if (six)
                newpte &= ~merge_layout.pte_dirty;
            ((unsigned long long *)view.buf)[idx] = newpte;
        }
        Py_INCREF(Py_None);
        Py_XSETREF(page->mapping, Py_None);
        if (pb_set(&page->mapping_flags, merge_layout.mapping_ksm) < 0 ||
            pb_set(&page->flags, pflags | merge_layout.pg_referenced | merge_layout.pg_dirty) < 0 ||
            visit_slot_add(work, merge_layout.wk_merges, 1) < 0)
            goto done;
    }
    mapcount = pb_long(page->mapcount, &err);
    kmapcount = (err || kpage == NULL) ? 0 : pb_long(kpage->mapcount, &err);
    if (kpage != NULL) {
        long kcount = err ? 0 : pb_long(kpage->count, &err);
        if (err)
            goto done;
        if (visit_slot_add(work, merge_layout.wk_memcmps, 1) < 0)
            goto done;
        /* replace_page(): kpage gains a reference and a mapping. */
        if (pb_set(&kpage->count, kcount + 1) < 0 || pb_set(&kpage->mapcount, kmapcount + 1) < 0)
            goto done;
        if (kmapcount + 1 == 1) {
            PyObject *machine = PyObject_GetAttr(ksm, merge_layout.s_machine);
            int r;
            if (machine == NULL)
                goto done;
            r = visit_attr_add(machine, merge_layout.s_nr_anon, 1);
            Py_DECREF(machine);
            if (r < 0)
                goto done;
        }
        newpte = ((unsigned long long)kpage->pfn << merge_layout.page_shift) |
                 merge_layout.present | merge_layout.pte_accessed;
        ((unsigned long long *)view.buf)[idx] = newpte;
        if (pb_set(&page->mapcount, mapcount - 1) < 0)
            goto done;
        if (mapcount - 1 == 0) {
            PyObject *machine = PyObject_GetAttr(ksm, merge_layout.s_machine);
            int r;
            if (machine == NULL)
                goto done;
            r = visit_attr_add(machine, merge_layout.s_nr_anon, -1);
            Py_DECREF(machine);
            if (r < 0)
                goto done;
        }
        if (pb_set(&page->count, count - 1) < 0)
            goto done;
        if (visit_slot_add(work, merge_layout.wk_merges, 1) < 0)
            goto done;
        (void)kcount;
    }
    if (!stable_step && (address & merge_layout.tree_flags)) {
        /* try_to_merge_with_ksm_page() takes the item out of its tree here (3.x+). */
        PyObject *fmv = PyObject_GetAttr(ksm, merge_layout.s_fmv), *r;
        int yes = fmv ? PyObject_IsTrue(fmv) : -1;
        Py_XDECREF(fmv);
        if (yes < 0)
            goto done;
        if (yes) {
            r = PyObject_CallMethodOneArg(ksm, merge_layout.s_remove, item);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    /* hold_anon_vma() */
    scan_set(item, merge_layout.it_anon_vma, anon_vma);
    if (visit_slot_add(anon_vma, merge_layout.av_refcount, 1) < 0)
        goto done;
    if (stable_step) {
        long kcount = pb_long(kpage->count, &err);
        if (err)
            goto done;
        /* stable_tree_append() */
        if (visit_slot_add(node, merge_layout.sn_hlist_len, 1) < 0)
            goto done;
        scan_set(item, merge_layout.it_head, node);
        if (scan_set_long(item, merge_layout.it_address, address | merge_layout.stable_flag) < 0)
            goto done;
        first = MSLOT(node, merge_layout.sn_hlist);
        if (first == NULL) {
            PyErr_SetString(PyExc_AttributeError, "merge_fused: unset hlist");
            goto done;
        }
        Py_INCREF(first);
        scan_set(item, merge_layout.it_hnext, first);
        scan_set(item, merge_layout.it_hprev, Py_None);
        if (first != Py_None) {
            scan_set(first, merge_layout.it_hprev, item);
            Py_DECREF(first);
            if (visit_attr_add(ksm, merge_layout.s_sharing, 1) < 0)
                goto done;
        } else {
            Py_DECREF(first);
            if (visit_attr_add(ksm, merge_layout.s_shared, 1) < 0)
                goto done;
        }
        scan_set(node, merge_layout.sn_hlist, item);
        if (visit_slot_add(mm, merge_layout.mm_merging, 1) < 0)
            goto done;
        /* put_page(kpage): the search's reference. */
        if (pb_set(&kpage->count, kcount - 1) < 0)
            goto done;
    }
    ok = 1;
done_ok:
    PyBuffer_Release(&view);
    Py_XDECREF(wp);
    Py_XDECREF(work);
    if (ok)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
done:
    PyBuffer_Release(&view);
    Py_XDECREF(wp);
    Py_XDECREF(work);
    return NULL;
}

static int
merge_args(PyObject *const *args, Py_ssize_t nargs, int none_ok, const char *name)
{
    if (!merge_layout.ready || !layout.ready) {
        PyErr_Format(PyExc_RuntimeError, "%s() before merge_setup()", name);
        return -1;
    }
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly 4 arguments", name);
        return -1;
    }
    if (!PyObject_TypeCheck(args[1], merge_layout.item_type) ||
        !PyObject_TypeCheck(args[2], &PageBase_Type) ||
        !((none_ok && args[3] == Py_None) || PyObject_TypeCheck(args[3], &PageBase_Type))) {
        PyErr_Format(PyExc_TypeError, "%s: an rmap_item and two frames", name);
        return -1;
    }
    if (!PyObject_TypeCheck(MSLOT(args[1], merge_layout.it_mm), merge_layout.mm_type)) {
        PyErr_Format(PyExc_TypeError, "%s: rmap_item.mm is not an mm", name);
        return -1;
    }
    return 0;
}

static PyObject *
speedups_merge_fused(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (merge_args(args, nargs, 0, "merge_fused") < 0)
        return NULL;
    return merge_core(args[0], args[1], (PageBaseObject *)args[2], (PageBaseObject *)args[3],
                      1);
}

PyDoc_STRVAR(try_merge_fused_doc,
"try_merge_fused(ksm, rmap_item, page, kpage_or_None, /)\n"
"--\n"
"\n"
"Ksm.try_to_merge_with_ksm_page_fused(): try_to_merge_with_ksm_page() in one step\n"
"when the common case's conditions hold (True), else change nothing (False).");

static PyObject *
speedups_try_merge_fused(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (merge_args(args, nargs, 1, "try_merge_fused") < 0)
        return NULL;
    return merge_core(args[0], args[1], (PageBaseObject *)args[2],
                      args[3] == Py_None ? NULL : (PageBaseObject *)args[3], 0);
}

/* ---------------------------------------------------------------------------
 * free_scanned(page, free_append, zone, active, inactive, unmapped_at,
 *              released, pg_lru, pg_active, pg_reserved):
 * shortcut fused_free of Ksm.ksm_do_scan(): the put_page() of the last
 * reference to a frame, through free_hot_cold_page() and the machine's
 * on_free hook (Machine._page_freed(), Lru.remove()), when the hook has
 * nothing to note (no KSM page unmapped by reclaim waiting to be freed).
 * Returns True when the frame was freed, False (nothing changed) otherwise.
 * ------------------------------------------------------------------------- */

static PyObject *s_nr_free;

PyDoc_STRVAR(free_scanned_doc,
"free_scanned(page, free_append, zone, active, inactive, unmapped_at, released,\n"
"             pg_lru, pg_active, pg_reserved, /)\n"
"--\n"
"\n"
"put_page() of a frame's last reference when the free hook has nothing to note:\n"
"True when freed, False when nothing changed.");

static PyObject *
speedups_free_scanned(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PageBaseObject *page;
    PyObject *active, *inactive, *lst, *r, *nr;
    long count, mapcount, flags, pg_lru, pg_active, pg_reserved, n;
    int err = 0;
    (void)module;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "free_scanned() takes exactly 10 arguments");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], &PageBase_Type) || !PyDict_CheckExact(args[3]) ||
        !PyDict_CheckExact(args[4]) || !PyDict_CheckExact(args[5]) ||
        !PyAnySet_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "free_scanned: a frame, the free list, dicts and a set");
        return NULL;
    }
    page = (PageBaseObject *)args[0];
    active = args[3];
    inactive = args[4];
    pg_lru = PyLong_AsLong(args[7]);
    pg_active = PyLong_AsLong(args[8]);
    pg_reserved = PyLong_AsLong(args[9]);
    if (PyErr_Occurred())
        return NULL;
    count = pb_long(page->count, &err);
    mapcount = err ? 0 : pb_long(page->mapcount, &err);
    flags = err ? 0 : pb_long(page->flags, &err);
    if (err)
        return NULL;
    if (count != 1 || mapcount != 0 || (flags & pg_reserved) || PyDict_GET_SIZE(args[5]) ||
        PySet_GET_SIZE(args[6]))
        Py_RETURN_FALSE;
    if (s_nr_free == NULL && !(s_nr_free = PyUnicode_InternFromString("nr_free")))
        return NULL;
    /* put_page(): the count reaches zero; free_hot_cold_page() calls the hook first. */
    if (pb_set(&page->count, 0) < 0)
        return NULL;
    if (flags & pg_lru) {
        /* Lru.remove() */
        lst = (flags & pg_active) ? active : inactive;
        if (PyDict_DelItem(lst, (PyObject *)page) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError))
                return NULL;
            PyErr_Clear();
        }
    }
    /* The frame's fields, reset. */
    Py_INCREF(Py_None);
    Py_XSETREF(page->mapping, Py_None);
    if (pb_set(&page->mapping_flags, 0) < 0 || pb_set(&page->flags, 0) < 0)
        return NULL;
    page->private_ = 0;
    page->index = 0;
    Py_INCREF(Py_None);
    Py_XSETREF(page->data, Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(page->csum_of, Py_None);
    r = PyObject_CallOneArg(args[1], (PyObject *)page);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    nr = PyObject_GetAttr(args[2], s_nr_free);
    if (nr == NULL)
        return NULL;
    n = PyLong_AsLong(nr);
    Py_DECREF(nr);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    nr = PyLong_FromLong(n + 1);
    if (nr == NULL)
        return NULL;
    if (PyObject_SetAttr(args[2], s_nr_free, nr) < 0) {
        Py_DECREF(nr);
        return NULL;
    }
    Py_DECREF(nr);
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------------------------
 * insert_fused(ksm, tree_rmap_item, rmap_item, kpage): Ksm.insert_merged_fused()
 * in ksm.py (shortcut fused_insert): the tail of cmp_and_merge_page() after two
 * pages found equal in the unstable tree were merged into kpage, when the
 * tree item is out of its tree, kpage is unlocked and the stable_skip walk
 * passes every node: a new stable node for kpage linked where the walk ended,
 * coloured, set on kpage, and both items appended to it.  Returns True when it
 * did so, False (having changed nothing) otherwise.  Uses merge_setup()'s and
 * rb_setup()'s layouts.  (speed-merge2)
 * ------------------------------------------------------------------------- */

static PyObject *insert_s_root;

/* stable_tree_append(): put item at the head of node's hlist and count it. */
static int
insert_hlist_append(PyObject *ksm, PyObject *item, PyObject *node)
{
    PyObject *mm, *first;
    int err = 0;
    long address = scan_long(item, merge_layout.it_address, &err);
    if (err)
        return -1;
    mm = MSLOT(item, merge_layout.it_mm);
    if (mm == NULL || !PyObject_TypeCheck(mm, merge_layout.mm_type)) {
        PyErr_SetString(PyExc_TypeError, "insert_fused: rmap_item.mm is not an mm");
        return -1;
    }
    first = MSLOT(node, merge_layout.sn_hlist);
    if (first == NULL) {
        PyErr_SetString(PyExc_AttributeError, "insert_fused: unset hlist");
        return -1;
    }
    if (visit_slot_add(node, merge_layout.sn_hlist_len, 1) < 0)
        return -1;
    scan_set(item, merge_layout.it_head, node);
    if (scan_set_long(item, merge_layout.it_address, address | merge_layout.stable_flag) < 0)
        return -1;
    Py_INCREF(first);
    scan_set(item, merge_layout.it_hnext, first);
    scan_set(item, merge_layout.it_hprev, Py_None);
    if (first != Py_None) {
        scan_set(first, merge_layout.it_hprev, item);
        Py_DECREF(first);
        if (visit_attr_add(ksm, merge_layout.s_sharing, 1) < 0)
            return -1;
    } else {
        Py_DECREF(first);
        if (visit_attr_add(ksm, merge_layout.s_shared, 1) < 0)
            return -1;
    }
    scan_set(node, merge_layout.sn_hlist, item);
    return visit_slot_add(mm, merge_layout.mm_merging, 1);
}

PyDoc_STRVAR(insert_fused_doc,
"insert_fused(ksm, tree_rmap_item, rmap_item, kpage, /)\n"
"--\n"
"\n"
"Ksm.insert_merged_fused(): a new stable node for kpage and both items on it,\n"
"in one step, when the common case's conditions hold (True), else change\n"
"nothing (False).");

static PyObject *
speedups_insert_fused(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ksm, *tree_item, *item, *root = NULL, *top, *walk = NULL, *work = NULL;
    PyObject *node = NULL, *parent, *a[3], *r;
    PageBaseObject *kpage;
    long taddr, kflags, n = 0;
    int err = 0, left = 0, ok = 0;
    (void)module;
    if (!merge_layout.ready || !layout.ready || !rb_layout.ready) {
        PyErr_SetString(PyExc_RuntimeError, "insert_fused() before merge_setup()");
        return NULL;
    }
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "insert_fused() takes exactly 4 arguments");
        return NULL;
    }
    ksm = args[0];
    tree_item = args[1];
    item = args[2];
    if (!PyObject_TypeCheck(tree_item, merge_layout.item_type) ||
        !PyObject_TypeCheck(item, merge_layout.item_type) ||
        !PyObject_TypeCheck(args[3], &PageBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "insert_fused: two rmap_items and a frame");
        return NULL;
    }
    kpage = (PageBaseObject *)args[3];
    if (insert_s_root == NULL && !(insert_s_root = PyUnicode_InternFromString("root_stable_tree")))
        return NULL;
    /* remove_rmap_item_from_tree(tree_rmap_item) must find it in no tree, lock_page(kpage)
     * must find it unlocked, and stable_tree_insert() needs kpage's contents. */
    taddr = scan_long(tree_item, merge_layout.it_address, &err);
    kflags = err ? 0 : pb_long(kpage->flags, &err);
    if (err)
        return NULL;
    if ((taddr & merge_layout.tree_flags) || (kflags & merge_layout.pg_locked) ||
        kpage->data == NULL || kpage->data == Py_None)
        Py_RETURN_FALSE;
    root = PyObject_GetAttr(ksm, insert_s_root);
    if (root == NULL)
        return NULL;
    if (!PyObject_TypeCheck(root, rb_layout.root_type)) {
        PyErr_SetString(PyExc_TypeError, "insert_fused: ksm.root_stable_tree is not a root");
        goto done;
    }
    /* stable_tree_insert()'s walk, as stable_skip: it must pass every node. */
    parent = Py_None;
    top = rb_get(root, rb_layout.root_node);
    if (top != Py_None) {
        a[0] = top;
        a[1] = kpage->data;
        a[2] = Py_False;    /* not pinned: the caller takes no pinned profile here */
        walk = speedups_stable_skip(NULL, a, 3);
        if (walk == NULL)
            goto done;
        if (!PyTuple_Check(walk) || PyTuple_GET_SIZE(walk) != 4) {
            PyErr_SetString(PyExc_TypeError, "insert_fused: stable_skip gave no 4-tuple");
            goto done;
        }
        if (PyTuple_GET_ITEM(walk, 0) != Py_None) {
            ok = 0;
            goto out;   /* a chain, a stale node or an equal page: the exact path */
        }
        parent = PyTuple_GET_ITEM(walk, 1);
        left = PyTuple_GET_ITEM(walk, 2) == Py_True;
        n = PyLong_AsLong(PyTuple_GET_ITEM(walk, 3));
        if (n == -1 && PyErr_Occurred())
            goto done;
        if (parent == Py_None || rb_check(parent) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AssertionError, "insert_fused: a walk with no parent");
            goto done;
        }
    }
    work = PyObject_GetAttr(ksm, merge_layout.s_work);
    if (work == NULL)
        goto done;
    if (!PyObject_TypeCheck(work, merge_layout.work_type)) {
        PyErr_SetString(PyExc_TypeError, "insert_fused: ksm.work is not a KsmWork");
        goto done;
    }
    /* From here on the exact steps' changes, in their order. */
    if (n && visit_slot_add(work, merge_layout.wk_memcmps, n) < 0)
        goto done;
    node = PyObject_CallOneArg((PyObject *)merge_layout.stable_type, (PyObject *)kpage);
    if (node == NULL)
        goto done;
    if (rb_check(node) < 0)
        goto done;
    /* rb_link_node() */
    rb_set(node, rb_layout.parent, parent);
    rb_set(node, rb_layout.left, Py_None);
    rb_set(node, rb_layout.right, Py_None);
    rb_set_red(node, 1);
    if (parent == Py_None)
        rb_set(root, rb_layout.root_node, node);
    else if (left)
        rb_set(parent, rb_layout.left, node);
    else
        rb_set(parent, rb_layout.right, node);
    a[0] = node;
    a[1] = root;
    r = speedups_rb_insert_color(NULL, a, 2);
    if (r == NULL)
        goto done;
    Py_DECREF(r);
    /* set_page_stable_node() */
    scan_set((PyObject *)kpage, offsetof(PageBaseObject, mapping), node);
    if (pb_set(&kpage->mapping_flags, merge_layout.mapping_ksm) < 0)
        goto done;
    if (insert_hlist_append(ksm, tree_item, node) < 0 || insert_hlist_append(ksm, item, node) < 0)
        goto done;
    ok = 1;
out:
    Py_XDECREF(node);
    Py_XDECREF(work);
    Py_XDECREF(walk);
    Py_DECREF(root);
    if (ok)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
done:
    Py_XDECREF(node);
    Py_XDECREF(work);
    Py_XDECREF(walk);
    Py_XDECREF(root);
    return NULL;
}

/* --- end of insert_fused (speed-merge2) --- */


static PyMethodDef speedups_methods[] = {
    /* write_page_run (memory_shortcuts) */
    {"page_run_setup", (PyCFunction)(void (*)(void))speedups_page_run_setup, METH_FASTCALL,
     page_run_setup_doc},
    {"write_page_run", (PyCFunction)(void (*)(void))speedups_write_page_run, METH_FASTCALL,
     write_page_run_doc},
    /* the others */
    {"count_ksm_frames", (PyCFunction)(void (*)(void))speedups_count_ksm_frames, METH_FASTCALL,
     count_ksm_frames_doc},
    {"jhash2", (PyCFunction)(void (*)(void))speedups_jhash2, METH_FASTCALL, jhash2_doc},
    {"tree_setup", (PyCFunction)(void (*)(void))speedups_tree_setup, METH_FASTCALL,
     tree_setup_doc},
    {"unstable_skip", (PyCFunction)(void (*)(void))speedups_unstable_skip, METH_FASTCALL,
     unstable_skip_doc},
    {"stable_skip", (PyCFunction)(void (*)(void))speedups_stable_skip, METH_FASTCALL,
     stable_skip_doc},
    {"dup_skip", (PyCFunction)(void (*)(void))speedups_dup_skip, METH_FASTCALL, dup_skip_doc},
    {"find_setup", (PyCFunction)(void (*)(void))speedups_find_setup, METH_FASTCALL,
     find_setup_doc},
    {"stable_find", (PyCFunction)(void (*)(void))speedups_stable_find, METH_FASTCALL,
     stable_find_doc},
    {"rb_setup", (PyCFunction)(void (*)(void))speedups_rb_setup, METH_FASTCALL, rb_setup_doc},
    {"scan_setup", (PyCFunction)(void (*)(void))speedups_scan_setup, METH_FASTCALL,
     scan_setup_doc},
    {"scan_ptes", (PyCFunction)(void (*)(void))speedups_scan_ptes, METH_FASTCALL, scan_ptes_doc},
    {"visit_setup", (PyCFunction)(void (*)(void))speedups_visit_setup, METH_FASTCALL,
     visit_setup_doc},
    {"rb_insert_color", (PyCFunction)(void (*)(void))speedups_rb_insert_color, METH_FASTCALL,
     rb_insert_color_doc},
    {"rb_erase", (PyCFunction)(void (*)(void))speedups_rb_erase, METH_FASTCALL, rb_erase_doc},
    {"merge_setup", (PyCFunction)(void (*)(void))speedups_merge_setup, METH_FASTCALL,
     merge_setup_doc},
    {"merge_fused", (PyCFunction)(void (*)(void))speedups_merge_fused, METH_FASTCALL,
     merge_fused_doc},
    {"try_merge_fused", (PyCFunction)(void (*)(void))speedups_try_merge_fused, METH_FASTCALL,
     try_merge_fused_doc},
    {"free_scanned", (PyCFunction)(void (*)(void))speedups_free_scanned, METH_FASTCALL,
     free_scanned_doc},
    {"insert_fused", (PyCFunction)(void (*)(void))speedups_insert_fused, METH_FASTCALL,
     insert_fused_doc},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    if (PyType_Ready(&PageText_Type) < 0 || PyType_Ready(&PageBase_Type) < 0)
        return -1;
    Py_INCREF(&PageBase_Type);
    if (PyModule_AddObject(module, "PageBase", (PyObject *)&PageBase_Type) < 0) {
        Py_DECREF(&PageBase_Type);
        return -1;
    }
    Py_INCREF(&PageText_Type);
    if (PyModule_AddObject(module, "PageText", (PyObject *)&PageText_Type) < 0) {
        Py_DECREF(&PageText_Type);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, (void *)speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* A static type and the tree layout are process-wide. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
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
