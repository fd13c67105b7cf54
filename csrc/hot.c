/*
 * hot.c -- shmguard._hot: execute()'s common path in ONE CPython call.
 *
 * Why not cffi here: each cffi call parses its arguments generically and
 * releases and re-takes the GIL; execute() needs two crossings (admit before
 * the user's function, record after), which cost ~200 ns of its ~530 ns
 * overhead (bench/core.py). This module does admit -> call -> record inside
 * one METH_FASTCALL function and hands every unusual case (rejection, probe
 * permit, full bulkhead, exception, state change, closed service) back to Python methods
 * of the endpoint object, so no decision is made here that C in the cffi
 * module does not make too. It reads no shared word itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "shmguard.h"

#include "hot.h"

#define LEASE_BITS (0xFULL << 34)

/* execute(ep, hp, cp, fn, args, kwargs) */
static PyObject *hot_execute(PyObject *self, PyObject *const *a, Py_ssize_t n)
{
    (void)self;
    if (n != 6) {
        PyErr_SetString(PyExc_TypeError, "execute(ep, hp, cp, fn, args, kwargs)");
        return NULL;
    }
    PyObject *ep = a[0], *args = a[4], *kw = a[5] == Py_None ? NULL : a[5];
    const struct sg_handle *h = PyLong_AsVoidPtr(a[1]);
    unsigned long long cp = PyLong_AsUnsignedLongLong(a[2]);
    if (PyErr_Occurred())
        return NULL;
    if (h == NULL) /* the service was closed: Python raises the error */
        return PyObject_CallMethod(ep, "closed_error", NULL);
    if (!PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "execute: args must be a tuple");
        return NULL;
    }
    struct hot_call c = {a[3], &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), kw};
    return hot_run(ep, h, cp, &c);
}

/* Breaker + limiter admission (execute and the C guard): the token, or -1
 * with the error set. *now is the clock reading it decided at (the bulkhead
 * grant's time too), 0 when Python took over: a rejection (raise, or reclaim
 * a dead probe holder, SG_E_GONE for a closed service or a removed endpoint)
 * or a probe permit (a health probe may stand in) may have taken a while. */
int64_t hot_admit(PyObject *ep, const struct sg_handle *h, unsigned long long cp, uint64_t *now)
{
    int64_t tok = sg_admit_now(h, cp, now);
    if (tok >= 0 && !((uint64_t)tok & LEASE_BITS))
        return tok;
    *now = 0;
    PyObject *r = PyObject_CallMethod(ep, "slow_admit", "LK", (long long)tok, cp);
    if (r == NULL)
        return -1;
    tok = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (tok >= 0)
        return tok;
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "slow_admit returned a negative token");
    return -1;
}

/* Admit, call c, record: the one crossing of execute() (also svc.execute's
 * bound form, hot_service.c). */
PyObject *hot_run(PyObject *ep, const struct sg_handle *h, unsigned long long cp,
                  const struct hot_call *c)
{
    uint64_t now = 0;
    int64_t tok = hot_admit(ep, h, cp, &now);
    if (tok < 0)
        return NULL;
    int64_t bt = hot_bulkhead_enter(ep, h, tok, cp, now);
    if (bt < 0)
        return NULL;
    PyObject *res = c->kw ? PyObject_VectorcallDict(c->fn, c->args, (size_t)c->n, c->kw)
                          : PyObject_Vectorcall(c->fn, c->args, (size_t)c->n, NULL);
    if (bt > 0) /* the ticket goes back as soon as the call is over */
        sg_bulkhead_release(h, bt);
    if (res == NULL) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb != NULL)
            PyException_SetTraceback(ev, tb);
        /* classify, record and fire callbacks in Python; then re-raise */
        PyObject *r = PyObject_CallMethod(ep, "record_exception", "OL", ev, (long long)tok);
        if (r == NULL) { /* a callback raised: that error replaces fn's */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
            return NULL;
        }
        Py_DECREF(r);
        PyErr_Restore(et, ev, tb);
        return NULL;
    }
    int t = sg_breaker_record(h, tok | SG_SUCCESS);
    if (t != 0) { /* a state change (or a bad token): callbacks in Python */
        PyObject *r = PyObject_CallMethod(ep, "after_record", "iL", t, (long long)tok);
        if (r == NULL) {
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(r);
    }
    return res;
}

/* The bulkhead, after breaker and limiter (granted at `now`, 0: read the
 * clock): a ticket (> 0), 0 when the policy
 * has none, or -1 with the error set (refused: Python gave the probe permit
 * of `tok` back). A full bulkhead or a quota recount goes to Python. */
int64_t hot_bulkhead_enter(PyObject *ep, const struct sg_handle *h, int64_t tok,
                           unsigned long long cp, uint64_t now)
{
    int64_t bt = sg_bulkhead_acquire_now(h, (uint32_t)(cp & 3) | SG_BH_QUIET, now);
    if (bt >= 0 && !((uint64_t)bt & SG_BH_REFRESH))
        return bt;
    PyObject *r = PyObject_CallMethod(ep, "slow_bulkhead", "LLK", (long long)bt, (long long)tok,
                                      cp);
    if (r == NULL)
        return -1;
    bt = PyLong_AsLongLong(r);
    Py_DECREF(r);
    return bt;
}

static PyObject *hp_name; /* interned "hp" */

const struct sg_handle *hot_handle_of(PyObject *ep)
{
    PyObject *hp = PyObject_GetAttr(ep, hp_name);
    if (hp == NULL)
        return NULL;
    const struct sg_handle *h = PyLong_AsVoidPtr(hp);
    Py_DECREF(hp);
    if (h == NULL && !PyErr_Occurred()) { /* closed: let Python raise its error */
        PyObject *r = PyObject_CallMethod(ep, "closed_error", NULL);
        Py_XDECREF(r);
    }
    return h;
}

static PyMethodDef methods[] = {
    {"execute", (PyCFunction)(void (*)(void))hot_execute, METH_FASTCALL,
     "execute(ep, hp, cp, fn, args, kwargs): admit, call, record (see _calls.py)"},
    {"bind_allow", (PyCFunction)(void (*)(void))hot_bind_allow, METH_FASTCALL,
     "bind_allow(kind, ep, slow): limiter.allow (0) or breaker.allow (1) of ep"},
    {"set_ready", hot_set_ready, METH_O,
     "set_ready(fn): fn(value) -> awaitable of value (Guard's __aenter__/__aexit__)"},
    {"bind_kl_allow", (PyCFunction)(void (*)(void))hot_bind_kl_allow, METH_FASTCALL,
     "bind_kl_allow(khp, owner, slow): keyed_limiter.allow (see keyed.py)"},
    {"bind_bulkhead", (PyCFunction)(void (*)(void))hot_bind_bulkhead, METH_FASTCALL,
     "bind_bulkhead(ep, slow): bulkhead.try_acquire (see bulkhead.py)"},
    {"bind_execute", (PyCFunction)(void (*)(void))hot_bind_execute, METH_FASTCALL,
     "bind_execute(fn): the C method ResilienceService.execute wrapping fn (see _calls.py)"},
    {"bind_guard", (PyCFunction)(void (*)(void))hot_bind_guard, METH_FASTCALL,
     "bind_guard(fn): the C method ResilienceService.guard wrapping fn (see _calls.py)"},
    {"set_key_gate", (PyCFunction)(void (*)(void))hot_set_key_gate, METH_FASTCALL,
     "set_key_gate(gate, refuse): execute's key= (see _keyed_calls.py)"},
    {"deadlines_in_use", hot_deadlines_in_use, METH_NOARGS,
     "deadlines_in_use(): bound executes hand every call to Python from now on"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shmguard._hot", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hot(void)
{
    hp_name = PyUnicode_InternFromString("hp");
    if (hp_name == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "ABI_VERSION", SG_ABI_VERSION) < 0 ||
              hot_add_handle_types(m) < 0 || hot_add_keyed_types(m) < 0 ||
              hot_add_bulkhead_types(m) < 0 || hot_add_service_types(m) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
