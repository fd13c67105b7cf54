/*
 * hot_service.c -- ResilienceService.execute and .guard as C methods:
 * execute(endpoint, fn, *args) and guard(endpoint) without a Python frame.
 *
 * The Python method (Calls.execute in _calls.py) builds a frame, a **kwargs
 * dict and a *args tuple on every call, and looks up half a dozen names:
 * about two thirds of execute()'s overhead once admission itself is one C
 * crossing. This method descriptor (the class attribute, so a service
 * holds no reference to it and dropping a service needs no cyclic GC)
 * takes the common call -- an endpoint this process
 * has bound, a function and positional arguments, no keywords, no metrics
 * callback, no deadline ever set in the process -- straight to hot_run()
 * (hot.c), and hands every other call, unchanged, to the Python method: so
 * it decides nothing the Python method would decide differently.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#include "hot.h"

typedef struct {
    PyObject_HEAD
    PyObject *slow; /* the Python method: Calls.execute(self, endpoint, fn, *args, **kw) or
                       Calls.guard(self, endpoint, **kw) */
    vectorcallfunc vectorcall;
} ExecuteObject;

static int deadlines_used; /* set once a deadline was set in this process */
static PyObject *key_gate;   /* _keyed_calls.gate(svc, ep, key): the key's token, or raises */
static PyObject *key_refuse; /* _keyed_calls.refuse(svc, ep, key): raises the key's refusal */
static PyObject *key_name, *key_allow_name; /* interned */
static PyObject *omu_name, *eps_name, *events_name, *probe_name; /* interned attribute names */
static PyObject *stale_name; /* interned "stale" */

PyObject *hot_deadlines_in_use(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    deadlines_used = 1;
    Py_RETURN_NONE;
}

/* 1: no on_metrics_update callback is set on the endpoint's service; 0: one is; -1: error */
static int plain(PyObject *ep)
{
    /* the endpoint's Events are its service's (a __slots__ read, cheaper than svc._events) */
    PyObject *events = PyObject_GetAttr(ep, events_name);
    if (events == NULL)
        return -1;
    PyObject *cb = PyObject_GetAttr(events, omu_name);
    Py_DECREF(events);
    if (cb == NULL)
        return -1;
    int r = cb == Py_None;
    Py_DECREF(cb);
    return r;
}

/* The endpoint this process bound for `name` (a new reference) when the C
 * path may take the call: no metrics callback on the service and, for the
 * guard (`no_probe`), no health probe. NULL without an error: the Python
 * method takes the call; NULL with one: raise it. */
static PyObject *fast_endpoint(PyObject *svc, PyObject *name, int no_probe)
{
    PyObject *eps = PyObject_GetAttr(svc, eps_name);
    if (eps == NULL)
        return NULL;
    PyObject *ep = PyDict_Check(eps) ? PyDict_GetItemWithError(eps, name) : NULL;
    Py_XINCREF(ep); /* fn may change the dict: keep the endpoint alive */
    Py_DECREF(eps);
    int p = ep != NULL ? plain(ep) : 0;
    if (p > 0 && no_probe) {
        PyObject *probe = PyObject_GetAttr(ep, probe_name);
        p = probe == NULL ? -1 : probe == Py_None;
        Py_XDECREF(probe);
    }
    if (p > 0)
        return ep;
    Py_XDECREF(ep);
    return NULL;
}

PyObject *hot_set_key_gate(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "set_key_gate(gate, refuse)");
        return NULL;
    }
    Py_XSETREF(key_gate, Py_NewRef(a[0]));
    Py_XSETREF(key_refuse, Py_NewRef(a[1]));
    Py_RETURN_NONE;
}

/* The keyed allow the gate cached on ep (ep.key_allow; None again whenever
 * ep.policy is replaced): 1 admitted, 0 refused, -1 not cached or it raised
 * (the gate then decides, and says why). Never leaves an exception set. */
static int cached_key_allow(PyObject *ep, PyObject *key)
{
    PyObject *ka = PyObject_GetAttr(ep, key_allow_name);
    int r = -1;
    if (ka != NULL && ka != Py_None) {
        PyObject *ok = PyObject_Vectorcall(ka, &key, 1, NULL);
        r = ok == NULL ? -1 : ok == Py_True;
        Py_XDECREF(ok);
    }
    Py_XDECREF(ka);
    PyErr_Clear();
    return r;
}

/* execute's key=: 0 with the key's token taken, or -1 with the refusal raised. */
static int take_key(PyObject *svc, PyObject *ep, PyObject *key)
{
    int r = cached_key_allow(ep, key);
    if (r == 1)
        return 0;
    PyObject *args[3] = {svc, ep, key};
    PyObject *g = PyObject_Vectorcall(r == 0 ? key_refuse : key_gate, args, 3, NULL);
    if (g == NULL)
        return -1;
    Py_DECREF(g);
    if (r == 0) { /* refuse() returned instead of raising: a bug, say so */
        PyErr_SetString(PyExc_SystemError, "shmguard: refuse() did not raise");
        return -1;
    }
    return 0;
}

/* The only keyword is key= (execute's keyed limit): its value, else NULL. */
static PyObject *only_key(PyObject *const *a, Py_ssize_t n, PyObject *kwnames)
{
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) != 1 || key_gate == NULL ||
        key_refuse == NULL)
        return NULL;
    PyObject *k = PyTuple_GET_ITEM(kwnames, 0);
    if (k != key_name && PyUnicode_Compare(k, key_name) != 0)
        return NULL;
    return a[n];
}

/* 1 (error cleared) when the error set is ep's admission finding its endpoint
 * removed (EndpointRemovedError.stale is ep: fn never ran), so the Python
 * method may look the name up again; else 0, the error kept. */
static int removed_at_admission(PyObject *ep)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyObject *st = v != NULL ? PyObject_GetAttr(v, stale_name) : NULL;
    int yes = st == ep;
    Py_XDECREF(st);
    if (yes) {
        Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
        return 1;
    }
    PyErr_Clear(); /* the GetAttr miss */
    PyErr_Restore(t, v, tb);
    return 0;
}

/* Called as a method: a[0] is the service, then endpoint, fn, *args (and key=). */
static PyObject *execute_call(PyObject *s, PyObject *const *a, size_t nargsf, PyObject *kwnames)
{
    ExecuteObject *x = (ExecuteObject *)s;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    PyObject *key = only_key(a, n, kwnames);
    if ((kwnames != NULL && key == NULL) || n < 3 || deadlines_used ||
        !PyUnicode_CheckExact(a[1]))
        return PyObject_Vectorcall(x->slow, a, nargsf, kwnames);
    PyObject *ep = fast_endpoint(a[0], a[1], 0);
    if (ep == NULL)
        return PyErr_Occurred() ? NULL : PyObject_Vectorcall(x->slow, a, nargsf, kwnames);
    if (key != NULL && take_key(a[0], ep, key) < 0) { /* the key's token first */
        Py_DECREF(ep);
        return NULL;
    }
    const struct sg_handle *h = hot_handle_of(ep);
    PyObject *r = NULL;
    if (h != NULL) {
        struct hot_call c = {a[2], a + 3, n - 3, NULL};
        r = hot_run(ep, h, 5 /* cost 1, NORMAL */, &c);
        if (r == NULL && key == NULL && removed_at_admission(ep))
            r = PyObject_Vectorcall(x->slow, a, nargsf, kwnames); /* it looks the name up again */
    }
    Py_DECREF(ep);
    return r;
}

/* svc.guard(endpoint): a C Guard when the Python method would make one
 * (bound endpoint, no keywords, no probe, no metrics callback, no deadline). */
static PyObject *guard_call(PyObject *s, PyObject *const *a, size_t nargsf, PyObject *kwnames)
{
    ExecuteObject *x = (ExecuteObject *)s;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || n != 2 || deadlines_used || !PyUnicode_CheckExact(a[1]))
        return PyObject_Vectorcall(x->slow, a, nargsf, kwnames);
    PyObject *ep = fast_endpoint(a[0], a[1], 1);
    if (ep == NULL)
        return PyErr_Occurred() ? NULL : PyObject_Vectorcall(x->slow, a, nargsf, kwnames);
    const struct sg_handle *h = hot_handle_of(ep);
    PyObject *g = h != NULL ? hot_guard_make(NULL, ep, h, 5 /* cost 1, NORMAL */) : NULL;
    Py_DECREF(ep);
    return g;
}

/* svc.execute outside a call (`ex = svc.execute`): a bound method of this callable. */
static PyObject *execute_get(PyObject *s, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(s);
    return PyMethod_New(s, obj);
}

static void execute_dealloc(PyObject *s)
{
    Py_XDECREF(((ExecuteObject *)s)->slow);
    Py_TYPE(s)->tp_free(s);
}

static PyObject *execute_forward(PyObject *s, void *attr)
{
    return PyObject_GetAttrString(((ExecuteObject *)s)->slow, (const char *)attr);
}

static PyObject *execute_get_wrapped(PyObject *s, void *u)
{
    (void)u;
    return Py_NewRef(((ExecuteObject *)s)->slow);
}

static PyGetSetDef execute_getset[] = {
    {"__doc__", execute_forward, NULL, "The Python method's docstring.", "__doc__"},
    {"__name__", execute_forward, NULL, "The Python method's name.", "__name__"},
    {"__qualname__", execute_forward, NULL, "The Python method's qualified name.", "__qualname__"},
    {"__wrapped__", execute_get_wrapped, NULL, "The Python method (inspect.signature).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ExecuteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmguard._hot.Execute",
    .tp_basicsize = sizeof(ExecuteObject),
    .tp_dealloc = execute_dealloc,
    .tp_vectorcall_offset = offsetof(ExecuteObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = execute_get,
    /* METHOD_DESCRIPTOR: `svc.execute(...)` calls us with svc first, no bound object */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_getset = execute_getset,
    .tp_doc = "Execute(fn): the class attribute `execute` whose common call runs in C.",
};

static PyObject *bind(PyObject *const *a, Py_ssize_t n, vectorcallfunc call)
{
    if (n != 1 || !PyCallable_Check(a[0])) {
        PyErr_SetString(PyExc_TypeError, "bind_execute(fn) / bind_guard(fn): fn is the method");
        return NULL;
    }
    ExecuteObject *x = PyObject_New(ExecuteObject, &ExecuteType);
    if (x == NULL)
        return NULL;
    x->slow = Py_NewRef(a[0]);
    x->vectorcall = call;
    return (PyObject *)x;
}

/* bind_execute(fn) / bind_guard(fn): the Python method fn as a C class attribute. */
PyObject *hot_bind_execute(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    return bind(a, n, execute_call);
}

PyObject *hot_bind_guard(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    return bind(a, n, guard_call);
}

int hot_add_service_types(PyObject *m)
{
    omu_name = PyUnicode_InternFromString("on_metrics_update");
    eps_name = PyUnicode_InternFromString("_eps");
    events_name = PyUnicode_InternFromString("events");
    probe_name = PyUnicode_InternFromString("probe");
    key_name = PyUnicode_InternFromString("key");
    stale_name = PyUnicode_InternFromString("stale");
    key_allow_name = PyUnicode_InternFromString("key_allow");
    if (!key_name || !stale_name || !key_allow_name || !omu_name || !eps_name || !events_name ||
        !probe_name || PyType_Ready(&ExecuteType) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "Execute", (PyObject *)&ExecuteType);
}
