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

#endif /* SHMGUARD_HOT_H */
