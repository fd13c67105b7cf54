/*
 * hot_handles.c -- the two-step doors of shmguard._hot: limiter.allow(),
 * breaker.allow() -> Permit, and `with svc.guard(ep):`, each ONE CPython
 * call into the C core with no Python frame and no Python __init__.
 *
 * Same rule as hot.c: the common case is decided here by the same C calls
 * the cffi path makes, and every unusual case (a rejection to raise, a probe
 * permit, a transition to report, an exception to classify, a closed
 * service, arguments) is handed back to a Python method of the endpoint,
 * which makes the decision the pure-Python path would. No shared word is
 * read here. The GIL is held throughout, so a close() in another thread
 * cannot unmap the slot under a call; a closed endpoint has h->slot == NULL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "shmguard.h"

#include "hot.h"

#define HO_FLAG (1ULL << 33)
#define LEASE_BITS (0xFULL << 34)
#define MAX_FWD 8

/* Forwards (self->ep, args...) to fn, keeping the caller's keywords. */
static PyObject *forward(PyObject *fn, PyObject *ep, PyObject *const *args, size_t nargsf,
                         PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf), nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[MAX_FWD + 1];
    if (n + nk + 1 > MAX_FWD + 1) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return NULL;
    }
    stack[0] = ep;
    for (Py_ssize_t i = 0; i < n + nk; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(fn, stack, (size_t)(n + 1), kwnames);
}

/* ---- limiter.allow ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    const struct sg_handle *h;
    PyObject *ep;   /* the Endpoint: owns the handle memory */
    PyObject *slow; /* slow(ep, *args, **kw) -> bool: every other case */
} AllowObject;

static PyObject *allow_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    AllowObject *a = (AllowObject *)self;
    if (PyVectorcall_NARGS(nargsf) == 0 && kw == NULL && a->h->slot != NULL) {
        int rc = sg_allow(a->h);
        if (rc == SG_OK)
            Py_RETURN_TRUE;
        if (rc == SG_R_RATE_LIMITED)
            Py_RETURN_FALSE;
    }
    return forward(a->slow, a->ep, args, nargsf, kw);
}

/* ---- breaker.allow and its Permit ----------------------------------------- */

typedef struct {
    PyObject_HEAD
    const struct sg_handle *h;
    PyObject *ep;
    int64_t tok;
    int done;
} PermitObject;

static PyTypeObject PermitType;

static PyObject *permit_make(PyObject *ep, const struct sg_handle *h, int64_t tok)
{
    PermitObject *p = PyObject_New(PermitObject, &PermitType);
    if (p == NULL)
        return NULL;
    Py_INCREF(ep);
    p->ep = ep;
    p->h = h;
    p->tok = tok;
    p->done = 0;
    return (PyObject *)p;
}

static PyObject *ballow_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    (void)args;
    AllowObject *b = (AllowObject *)self; /* slow(ep, tok) -> Permit | None */
    if (PyVectorcall_NARGS(nargsf) != 0 || kw != NULL) {
        PyErr_SetString(PyExc_TypeError, "allow() takes no arguments");
        return NULL;
    }
    if (b->h->slot == NULL)
        return PyObject_CallMethod(b->ep, "closed_error", NULL);
    int64_t tok = sg_breaker_acquire(b->h);
    if (tok >= 0 && !((uint64_t)tok & HO_FLAG))
        return permit_make(b->ep, b->h, tok);
    return PyObject_CallFunction(b->slow, "OL", b->ep, (long long)tok);
}

static PyObject *permit_finish(PermitObject *p, int outcome)
{
    if (p->done) {
        PyErr_SetString(PyExc_RuntimeError, "permit already used: report an outcome once");
        return NULL;
    }
    p->done = 1;
    if (p->h->slot == NULL)
        return PyObject_CallMethod(p->ep, "closed_error", NULL);
    int t = sg_breaker_record(p->h, p->tok | outcome);
    int kind = t & 7;
    /* allow() already reported a half-open transition: its echo is dropped */
    if (t < 0 || kind == SG_T_TO_OPEN || kind == SG_T_TO_HALF_OPEN || kind == SG_T_TO_CLOSED)
        return PyObject_CallMethod(p->ep, "permit_after", "iL", t, (long long)p->tok);
    Py_RETURN_NONE;
}

static PyObject *permit_success(PyObject *s, PyObject *u) { (void)u; return permit_finish((PermitObject *)s, SG_SUCCESS); }
static PyObject *permit_failure(PyObject *s, PyObject *u) { (void)u; return permit_finish((PermitObject *)s, SG_FAILURE); }
static PyObject *permit_ignore(PyObject *s, PyObject *u) { (void)u; return permit_finish((PermitObject *)s, SG_IGNORE); }

static PyObject *permit_done(PyObject *s, PyObject *ok)
{
    int v = PyObject_IsTrue(ok);
    if (v < 0)
        return NULL;
    return permit_finish((PermitObject *)s, v ? SG_SUCCESS : SG_FAILURE);
}

static PyObject *permit_release(PyObject *s, PyObject *u)
{
    (void)u;
    if (((PermitObject *)s)->done)
        Py_RETURN_NONE;
    return permit_finish((PermitObject *)s, SG_IGNORE);
}

static PyObject *permit_is_probe(PyObject *s, void *c)
{
    (void)c;
    return PyBool_FromLong(((uint64_t)((PermitObject *)s)->tok & LEASE_BITS) != 0);
}

static PyObject *permit_new(PyTypeObject *t, PyObject *args, PyObject *kw)
{
    (void)t;
    PyObject *ep;
    long long tok;
    if (kw != NULL || !PyArg_ParseTuple(args, "OL", &ep, &tok))
        return NULL;
    const struct sg_handle *h = hot_handle_of(ep);
    if (h == NULL)
        return NULL;
    return permit_make(ep, h, tok);
}

static PyObject *permit_repr(PyObject *s)
{
    PermitObject *p = (PermitObject *)s;
    return PyUnicode_FromFormat("<Permit probe=%s used=%s>",
                                ((uint64_t)p->tok & LEASE_BITS) ? "True" : "False",
                                p->done ? "True" : "False");
}

/* ---- with svc.guard(ep): ---------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    const struct sg_handle *h;
    PyObject *ep;
    unsigned long long cp;
    int64_t tok;
    int64_t bt; /* bulkhead ticket of the block (0: none) */
} GuardObject;

static PyObject *guard_enter(PyObject *s, PyObject *u)
{
    (void)u;
    GuardObject *g = (GuardObject *)s;
    uint64_t now = 0;
    int64_t tok = hot_admit(g->ep, g->h, g->cp, &now);
    if (tok < 0)
        return NULL;
    int64_t bt = hot_bulkhead_enter(g->ep, g->h, tok, g->cp, now);
    if (bt < 0)
        return NULL;
    g->tok = tok;
    g->bt = bt;
    Py_INCREF(s);
    return s;
}

static PyObject *guard_exit(PyObject *s, PyObject *const *a, Py_ssize_t n)
{
    GuardObject *g = (GuardObject *)s;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__(type, value, traceback)");
        return NULL;
    }
    if (g->tok < 0) {
        PyErr_SetString(PyExc_RuntimeError, "guard exited without being entered");
        return NULL;
    }
    int64_t tok = g->tok;
    g->tok = -1;
    if (g->bt > 0 && g->h->slot != NULL) /* the ticket goes back as the block ends */
        sg_bulkhead_release(g->h, g->bt);
    g->bt = 0;
    PyObject *r;
    if (a[1] != Py_None) /* classify, record and fire callbacks in Python */
        r = PyObject_CallMethod(g->ep, "record_exception", "OL", a[1], (long long)tok);
    else if (g->h->slot == NULL)
        r = PyObject_CallMethod(g->ep, "closed_error", NULL);
    else {
        int t = sg_breaker_record(g->h, tok | SG_SUCCESS);
        r = t ? PyObject_CallMethod(g->ep, "after_record", "iL", t, (long long)tok)
              : Py_NewRef(Py_None);
    }
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

/* `async with`: admission never waits here (no timeout), so __aenter__ and
 * __aexit__ do the sync work and hand back an awaitable of its result. */
static PyObject *ready_fn; /* async def ready(value): return value (set_ready) */

static PyObject *ready(PyObject *r)
{
    if (r == NULL)
        return NULL;
    if (ready_fn == NULL) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_RuntimeError, "shmguard._hot.set_ready() was not called");
        return NULL;
    }
    PyObject *aw = PyObject_CallOneArg(ready_fn, r);
    Py_DECREF(r);
    return aw;
}

/* `async with`: a bulkhead that is full (or due a quota recount) must not
 * block the loop: its wait is the coroutine ep.slow_bulkhead_async(), which
 * calls guard._entered(tok, ticket) once it holds a ticket. */
static PyObject *guard_aenter(PyObject *s, PyObject *u)
{
    (void)u;
    GuardObject *g = (GuardObject *)s;
    uint64_t now = 0;
    int64_t tok = hot_admit(g->ep, g->h, g->cp, &now);
    if (tok < 0)
        return NULL;
    int64_t bt = sg_bulkhead_acquire_now(g->h, (uint32_t)(g->cp & 3) | SG_BH_QUIET, now);
    if (bt < 0 || ((uint64_t)bt & SG_BH_REFRESH))
        return PyObject_CallMethod(g->ep, "slow_bulkhead_async", "OLLK", s, (long long)bt,
                                   (long long)tok, g->cp);
    g->tok = tok;
    g->bt = bt;
    return ready(Py_NewRef(s));
}

static PyObject *guard_entered(PyObject *s, PyObject *const *a, Py_ssize_t n)
{
    GuardObject *g = (GuardObject *)s;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "_entered(tok, ticket)");
        return NULL;
    }
    long long tok = PyLong_AsLongLong(a[0]), bt = PyLong_AsLongLong(a[1]);
    if ((tok == -1 || bt == -1) && PyErr_Occurred())
        return NULL;
    if (tok < 0 || bt < 0) {
        PyErr_Format(PyExc_ValueError, "_entered(%lld, %lld): negative token", tok, bt);
        return NULL;
    }
    g->tok = tok;
    g->bt = bt;
    return Py_NewRef(s);
}

static PyObject *guard_aexit(PyObject *s, PyObject *const *a, Py_ssize_t n)
{
    return ready(guard_exit(s, a, n));
}

PyObject *hot_set_ready(PyObject *self, PyObject *fn)
{
    (void)self;
    Py_XSETREF(ready_fn, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyTypeObject GuardType;

static PyObject *guard_new(PyTypeObject *t, PyObject *args, PyObject *kw)
{
    if (kw != NULL || PyTuple_GET_SIZE(args) != 2) {
        PyErr_SetString(PyExc_TypeError, "Guard(ep, cp)");
        return NULL;
    }
    PyObject *ep = PyTuple_GET_ITEM(args, 0);
    unsigned long long cp = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args, 1));
    if (cp == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    const struct sg_handle *h = hot_handle_of(ep);
    if (h == NULL)
        return NULL;
    return hot_guard_make(t, ep, h, cp);
}

/* A guard of ep (also svc.guard's C method, hot_service.c); t NULL: Guard. */
PyObject *hot_guard_make(PyTypeObject *t, PyObject *ep, const struct sg_handle *h,
                         unsigned long long cp)
{
    if (t == NULL)
        t = &GuardType;
    GuardObject *g = (GuardObject *)t->tp_alloc(t, 0);
    if (g == NULL)
        return NULL;
    Py_INCREF(ep);
    g->ep = ep;
    g->h = h;
    g->cp = cp;
    g->tok = -1;
    g->bt = 0;
    return (PyObject *)g;
}

/* ---- types ---------------------------------------------------------------- */

#define EP_DEALLOC(Type)                                                        \
    static void Type##_dealloc(PyObject *s)                                     \
    {                                                                           \
        PyTypeObject *tp = Py_TYPE(s);                                          \
        Py_XDECREF(((Type *)s)->ep);                                            \
        tp->tp_free(s);                                                         \
    }
EP_DEALLOC(PermitObject)

static void GuardObject_dealloc(PyObject *s)
{
    GuardObject *g = (GuardObject *)s;
    if (g->bt > 0 && g->h != NULL && g->h->slot != NULL) /* entered, never exited */
        sg_bulkhead_release(g->h, g->bt);
    Py_XDECREF(g->ep);
    Py_TYPE(s)->tp_free(s);
}

static void AllowObject_dealloc(PyObject *s)
{
    Py_XDECREF(((AllowObject *)s)->ep);
    Py_XDECREF(((AllowObject *)s)->slow);
    Py_TYPE(s)->tp_free(s);
}

/* allow/ballow objects are created by hot_bind_allow(); never from Python */
static PyTypeObject AllowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard._hot.LimiterAllow",
    .tp_basicsize = sizeof(AllowObject),
    .tp_dealloc = AllowObject_dealloc,
    .tp_vectorcall_offset = offsetof(AllowObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "allow(cost=1, priority=Priority.NORMAL) -> bool (see Limiter.allow)",
};

static PyTypeObject BAllowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard._hot.BreakerAllow",
    .tp_basicsize = sizeof(AllowObject),
    .tp_dealloc = AllowObject_dealloc,
    .tp_vectorcall_offset = offsetof(AllowObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "allow() -> Permit | None (see Breaker.allow)",
};

static PyMethodDef permit_methods[] = {
    {"success", permit_success, METH_NOARGS, "Records a success."},
    {"failure", permit_failure, METH_NOARGS, "Records a failure."},
    {"ignore", permit_ignore, METH_NOARGS, "Counts the call as neither (and frees a probe)."},
    {"done", permit_done, METH_O, "done(ok): records a success or a failure."},
    {"release", permit_release, METH_NOARGS, "Gives the permit back unused (same as ignore)."},
    {NULL, NULL, 0, NULL},
};
static PyObject *permit_token(PyObject *s, void *c)
{
    (void)c;
    return PyLong_FromLongLong(((PermitObject *)s)->tok);
}

static PyGetSetDef permit_getset[] = {
    {"is_probe", permit_is_probe, NULL, "Reports whether this permit is a half-open probe.", NULL},
    {"token", permit_token, NULL, "The admission token (generation, lease, start).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PyTypeObject PermitType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard.Permit",
    .tp_basicsize = sizeof(PermitObject),
    .tp_dealloc = PermitObject_dealloc,
    .tp_repr = permit_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Leave to make one call; report its outcome exactly once.\n\n"
              "A half-open probe permit is also a lease: if this process dies, or the call\n"
              "overruns the policy's probe_lease, the permit is reclaimed.",
    .tp_methods = permit_methods,
    .tp_getset = permit_getset,
    .tp_new = permit_new,
};

static PyMethodDef guard_methods[] = {
    {"__enter__", guard_enter, METH_NOARGS, "Admits the block (or raises the rejection)."},
    {"__exit__", (PyCFunction)(void (*)(void))guard_exit, METH_FASTCALL,
     "Records the block's outcome."},
    {"__aenter__", guard_aenter, METH_NOARGS, "async with: as __enter__."},
    {"__aexit__", (PyCFunction)(void (*)(void))guard_aexit, METH_FASTCALL,
     "async with: as __exit__."},
    {"_entered", (PyCFunction)(void (*)(void))guard_entered, METH_FASTCALL,
     "_entered(tok, ticket): the async bulkhead wait is over (slow_bulkhead_async)."},
    {NULL, NULL, 0, NULL},
};
static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard._hot.Guard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_dealloc = GuardObject_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Guard(ep, cp): `with` (or `async with`) admits on entry and records the\n"
              "outcome on exit. Not GC-tracked: it refers only to its endpoint.",
    .tp_methods = guard_methods,
    .tp_new = guard_new,
};

/* bind_allow(kind, ep, slow): kind 0 = limiter.allow, 1 = breaker.allow */
PyObject *hot_bind_allow(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "bind_allow(kind, ep, slow)");
        return NULL;
    }
    long kind = PyLong_AsLong(a[0]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    const struct sg_handle *h = hot_handle_of(a[1]);
    if (h == NULL)
        return NULL;
    AllowObject *o = PyObject_New(AllowObject, kind ? &BAllowType : &AllowType);
    if (o == NULL)
        return NULL;
    o->vectorcall = kind ? ballow_call : allow_call;
    o->h = h;
    Py_INCREF(a[1]);
    o->ep = a[1];
    Py_INCREF(a[2]);
    o->slow = a[2];
    return (PyObject *)o;
}

int hot_add_handle_types(PyObject *m)
{
    PyTypeObject *types[] = {&AllowType, &BAllowType, &PermitType, &GuardType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyType_Ready(types[i]) < 0)
            return -1;
    if (PyModule_AddObjectRef(m, "Permit", (PyObject *)&PermitType) < 0 ||
        PyModule_AddObjectRef(m, "Guard", (PyObject *)&GuardType) < 0)
        return -1;
    return 0;
}
