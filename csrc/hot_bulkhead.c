/*
 * hot_bulkhead.c -- bulkhead.try_acquire() -> Ticket and Ticket.release() of
 * shmguard._hot, each ONE CPython call into bulkhead.c.
 *
 * The common case (a free ticket) is decided here by the call the cffi path
 * makes (sg_bulkhead_acquire); a full bulkhead (dead holders to reclaim, the
 * rejection to count), a quota recount, no bulkhead, arguments or a closed
 * service go to the Python function `slow(ep, *args)`. A Ticket is made in C
 * before control returns to Python, so an exception raised between the call
 * and its assignment (a KeyboardInterrupt) drops the object, and its
 * deallocation gives the ticket back: nothing is left held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#include "shmguard.h"

#include "hot.h"

typedef struct {
    PyObject_HEAD
    const struct sg_handle *h;
    PyObject *ep;
    int64_t tok; /* > 0 while held */
} TicketObject;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    const struct sg_handle *h;
    PyObject *ep;
    PyObject *slow; /* slow(ep, *args, **kw) -> Ticket | None */
} TryObject;

static PyTypeObject TicketType, TryType;

static PyObject *ticket_make(PyObject *ep, const struct sg_handle *h, int64_t tok)
{
    TicketObject *t = PyObject_New(TicketObject, &TicketType);
    if (t == NULL) {
        sg_bulkhead_release(h, tok);
        return NULL;
    }
    Py_INCREF(ep);
    t->ep = ep;
    t->h = h;
    t->tok = tok;
    return (PyObject *)t;
}

static void ticket_give_back(TicketObject *t)
{
    int64_t tok = t->tok;
    t->tok = 0;
    if (tok > 0 && t->h->slot != NULL) /* a closed service has nothing to give back */
        sg_bulkhead_release(t->h, tok);
}

static PyObject *ticket_release(PyObject *s, PyObject *u)
{
    (void)u;
    ticket_give_back((TicketObject *)s);
    Py_RETURN_NONE;
}

static PyObject *ticket_enter(PyObject *s, PyObject *u)
{
    (void)u;
    return Py_NewRef(s);
}

static PyObject *ticket_exit(PyObject *s, PyObject *const *a, Py_ssize_t n)
{
    (void)a, (void)n;
    ticket_give_back((TicketObject *)s);
    Py_RETURN_FALSE;
}

static PyObject *ticket_held(PyObject *s, void *c)
{
    (void)c;
    return PyBool_FromLong(((TicketObject *)s)->tok > 0);
}

static PyObject *ticket_index(PyObject *s, void *c)
{
    (void)c;
    return PyLong_FromLong((long)((((TicketObject *)s)->tok >> 42) & 0x3f));
}

static PyObject *ticket_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    (void)tp;
    PyObject *ep;
    long long tok;
    if (kw != NULL || !PyArg_ParseTuple(args, "OL", &ep, &tok))
        return NULL;
    const struct sg_handle *h = hot_handle_of(ep);
    if (h == NULL)
        return NULL;
    return ticket_make(ep, h, tok);
}

static void ticket_dealloc(PyObject *s)
{
    ticket_give_back((TicketObject *)s); /* a Ticket dropped unreleased */
    Py_XDECREF(((TicketObject *)s)->ep);
    Py_TYPE(s)->tp_free(s);
}

static PyObject *ticket_repr(PyObject *s)
{
    TicketObject *t = (TicketObject *)s;
    return PyUnicode_FromFormat("<Ticket #%d %s>", (int)((t->tok >> 42) & 0x3f),
                                t->tok > 0 ? "held" : "released");
}

/* try_acquire(priority=NORMAL): a Ticket, or whatever slow() decides */
static PyObject *try_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    TryObject *o = (TryObject *)self;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    long prio = 1;
    if (n == 1 && kw == NULL && PyLong_Check(args[0]))
        prio = PyLong_AsLong(args[0]); /* a Priority */
    if (!((n == 0 || (n == 1 && prio >= 0 && prio <= 3)) && kw == NULL && o->h->slot != NULL))
        goto slow;
    int64_t t = sg_bulkhead_acquire(o->h, (uint32_t)prio | SG_BH_QUIET);
    if (t > 0 && !((uint64_t)t & SG_BH_REFRESH))
        return ticket_make(o->ep, o->h, t);
    if (t > 0) { /* granted, and the quota asks for a recount: Python, holding the ticket */
        PyObject *tk = ticket_make(o->ep, o->h, t & ~(int64_t)SG_BH_REFRESH);
        PyObject *r = tk ? PyObject_CallMethod(o->ep, "refresh_bulkhead", NULL) : NULL;
        if (r == NULL) {
            Py_XDECREF(tk); /* gives the ticket back */
            return NULL;
        }
        Py_DECREF(r);
        return tk;
    }
slow:
    if (PyErr_Occurred())
        PyErr_Clear(); /* slow() reports bad arguments with the right message */
    {
        PyObject *stack[2] = {o->ep, n == 1 ? args[0] : NULL};
        return PyObject_Vectorcall(o->slow, stack, (size_t)(1 + (n == 1)), kw);
    }
}

static void try_dealloc(PyObject *s)
{
    Py_XDECREF(((TryObject *)s)->ep);
    Py_XDECREF(((TryObject *)s)->slow);
    Py_TYPE(s)->tp_free(s);
}

/* bind_bulkhead(ep, slow) -> try_acquire */
PyObject *hot_bind_bulkhead(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "bind_bulkhead(ep, slow)");
        return NULL;
    }
    const struct sg_handle *h = hot_handle_of(a[0]);
    if (h == NULL)
        return NULL;
    TryObject *o = PyObject_New(TryObject, &TryType);
    if (o == NULL)
        return NULL;
    o->vectorcall = try_call;
    o->h = h;
    o->ep = Py_NewRef(a[0]);
    o->slow = Py_NewRef(a[1]);
    return (PyObject *)o;
}

static PyMethodDef ticket_methods[] = {
    {"release", ticket_release, METH_NOARGS, "Gives the ticket back (once; again: nothing)."},
    {"__enter__", ticket_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))ticket_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ticket_getset[] = {
    {"held", ticket_held, NULL, "Reports whether the ticket is still held.", NULL},
    {"index", ticket_index, NULL, "The ticket word this ticket holds (0..63).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TicketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard.Ticket",
    .tp_basicsize = sizeof(TicketObject),
    .tp_dealloc = ticket_dealloc,
    .tp_repr = ticket_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One bulkhead ticket, held until release() (or the end of a `with`).\n\n"
              "Dropping it unreleased gives it back; only the process that took it can.",
    .tp_methods = ticket_methods,
    .tp_getset = ticket_getset,
    .tp_new = ticket_new,
};

static PyTypeObject TryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard._hot.BulkheadTry",
    .tp_basicsize = sizeof(TryObject),
    .tp_dealloc = try_dealloc,
    .tp_vectorcall_offset = offsetof(TryObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "try_acquire(priority=Priority.NORMAL) -> Ticket | None (see Bulkhead)",
};

int hot_add_bulkhead_types(PyObject *m)
{
    if (PyType_Ready(&TicketType) < 0 || PyType_Ready(&TryType) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "Ticket", (PyObject *)&TicketType);
}
