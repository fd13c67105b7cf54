/*
 * hot.h -- shared between the files of the shmguard._hot extension (never
 * part of the cffi contract).
 */
#ifndef SHMGUARD_HOT_H
#define SHMGUARD_HOT_H

#include <Python.h>

#include "shmguard.h"

/* The handle of an Endpoint (its `hp` attribute), or NULL with the
 * endpoint's closed error set. */
const struct sg_handle *hot_handle_of(PyObject *ep);
PyObject *hot_bind_allow(PyObject *self, PyObject *const *a, Py_ssize_t n);
int hot_add_handle_types(PyObject *m);
PyObject *hot_set_ready(PyObject *self, PyObject *fn);
/* hot_keyed.c: keyed_limiter.allow */
PyObject *hot_bind_kl_allow(PyObject *self, PyObject *const *a, Py_ssize_t n);
int hot_add_keyed_types(PyObject *m);

/* hot.c: admit -> call -> record of one execute() */
struct hot_call {
    PyObject *fn;
    PyObject *const *args; /* positional arguments of fn */
    Py_ssize_t n;
    PyObject *kw;          /* a dict of keywords, or NULL */
};
PyObject *hot_run(PyObject *ep, const struct sg_handle *h, unsigned long long cp,
                  const struct hot_call *c);
int64_t hot_admit(PyObject *ep, const struct sg_handle *h, unsigned long long cp, uint64_t *now);

/* hot_handles.c: a Guard of ep (t NULL: the Guard type) */
PyObject *hot_guard_make(PyTypeObject *t, PyObject *ep, const struct sg_handle *h,
                         unsigned long long cp);

/* hot_service.c: svc.execute and svc.guard as C methods */
PyObject *hot_bind_execute(PyObject *self, PyObject *const *a, Py_ssize_t n);
PyObject *hot_bind_guard(PyObject *self, PyObject *const *a, Py_ssize_t n);
PyObject *hot_deadlines_in_use(PyObject *self, PyObject *unused);
PyObject *hot_set_key_gate(PyObject *self, PyObject *const *a, Py_ssize_t n);
int hot_add_service_types(PyObject *m);

int64_t hot_bulkhead_enter(PyObject *ep, const struct sg_handle *h, int64_t tok,
                           unsigned long long cp, uint64_t now);

/* hot_bulkhead.c: bulkhead.try_acquire -> Ticket */
PyObject *hot_bind_bulkhead(PyObject *self, PyObject *const *a, Py_ssize_t n);
int hot_add_bulkhead_types(PyObject *m);

#endif /* SHMGUARD_HOT_H */
