/*
 * hot_keyed.c -- keyed limiter allow(key) as ONE CPython call (shmguard._hot).
 *
 * kl.allow is an object of this type: called with just a key (str or bytes)
 * it hashes the key straight from the str's UTF-8 buffer (or the bytes),
 * decides with sg_kl_allow() and returns True or False, with no Python
 * frame. Every other case (a cost or priority, another key type, an error
 * code, a closed table) is handed to slow(owner, *args, **kw), the Python
 * path of keyed.py, which makes the decision the same way. The GIL is held
 * throughout, so a close() in another thread cannot unmap the table under
 * a call; a closed table has kh->table == NULL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#include "shmguard.h"

#include "hot.h"

#define CP_NORMAL ((1ULL << 2) | 1ULL) /* cost 1, Priority.NORMAL */
#define MAX_FWD 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    const struct sg_kl_handle *kh;
    PyObject *owner; /* the KeyedTable: owns the handle memory */
    PyObject *slow;  /* slow(owner, *args, **kw) -> bool */
} KlAllowObject;

static PyObject *forward(KlAllowObject *o, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf), nk = kw ? PyTuple_GET_SIZE(kw) : 0;
    PyObject *stack[MAX_FWD + 1];
    if (n + nk + 1 > MAX_FWD + 1) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return NULL;
    }
    stack[0] = o->owner;
    for (Py_ssize_t i = 0; i < n + nk; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(o->slow, stack, (size_t)(n + 1), kw);
}

static PyObject *kl_allow_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    KlAllowObject *o = (KlAllowObject *)self;
    if (PyVectorcall_NARGS(nargsf) == 1 && kw == NULL && o->kh->table != NULL) {
        const char *p = NULL;
        Py_ssize_t len = 0;
        if (PyUnicode_CheckExact(args[0])) {
            p = PyUnicode_AsUTF8AndSize(args[0], &len);
            if (p == NULL)
                return NULL; /* e.g. a lone surrogate: the encoder's error */
        } else if (PyBytes_CheckExact(args[0])) {
            p = PyBytes_AS_STRING(args[0]);
            len = PyBytes_GET_SIZE(args[0]);
        }
        if (p != NULL) {
            int rc = sg_kl_allow(o->kh, p, (uint64_t)len, CP_NORMAL);
            if (rc == SG_OK)
                Py_RETURN_TRUE;
            if (rc == SG_R_RATE_LIMITED || rc == SG_R_KL_FULL)
                Py_RETURN_FALSE;
        }
    }
    return forward(o, args, nargsf, kw);
}

static void kl_allow_dealloc(PyObject *self)
{
    KlAllowObject *o = (KlAllowObject *)self;
    Py_XDECREF(o->owner);
    Py_XDECREF(o->slow);
    PyObject_Free(self);
}

static PyTypeObject KlAllowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard._hot.KeyedAllow",
    .tp_basicsize = sizeof(KlAllowObject),
    .tp_dealloc = kl_allow_dealloc,
    .tp_vectorcall_offset = offsetof(KlAllowObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "allow(key, cost=1, priority=Priority.NORMAL) -> bool (see KeyedLimiter.allow)",
};

/* bind_kl_allow(khp, owner, slow): khp is the address of owner's handle */
PyObject *hot_bind_kl_allow(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "bind_kl_allow(khp, owner, slow)");
        return NULL;
    }
    const struct sg_kl_handle *kh = PyLong_AsVoidPtr(a[0]);
    if (kh == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "bind_kl_allow: no handle");
        return NULL;
    }
    KlAllowObject *o = PyObject_New(KlAllowObject, &KlAllowType);
    if (o == NULL)
        return NULL;
    o->vectorcall = kl_allow_call;
    o->kh = kh;
    Py_INCREF(a[1]);
    o->owner = a[1];
    Py_INCREF(a[2]);
    o->slow = a[2];
    return (PyObject *)o;
}

int hot_add_keyed_types(PyObject *m)
{
    (void)m;
    return PyType_Ready(&KlAllowType);
}
