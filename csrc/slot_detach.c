/*
 * slot_detach.c -- closing a segment while other threads may be inside a C
 * call on it.
 *
 * A thread of this process can be inside any call (the cffi doors release
 * the GIL) when another thread closes the service. Unmapping the segment
 * then would fault that call. Instead the range is replaced, in one
 * mmap(MAP_FIXED), by private zero pages: the process is detached from the
 * shared segment at once (nothing it does later reaches other processes),
 * and a call still running reads and writes zeros, which every door takes
 * as "gone" (a zero state word matches no handle). The range is unmapped
 * later by the caller, when no other thread is alive (_registry.py).
 *
 * For that the range belongs to an anonymous Python mmap (no fd kept) and
 * the segment is mapped over it (sg_segment_map): unmapping it, now or
 * after a detach, is that object's close.
 */
#define _DEFAULT_SOURCE
#include <sys/mman.h>

#include "layout.h"

int sg_segment_detach(void *base, uint64_t len)
{
    if (base == NULL || len == 0)
        return SG_E_ARG;
    void *p = mmap(base, (size_t)len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    return p == base ? SG_OK : SG_E_ARG;
}

/* Maps the segment `fd` over the range [base, base + len) this process owns. */
int sg_segment_map(void *base, uint64_t len, int fd)
{
    if (base == NULL || len == 0 || fd < 0)
        return SG_E_ARG;
    void *p = mmap(base, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    return p == base ? SG_OK : SG_E_ARG;
}
