"""Helper modules for bench/peers.py (peer benchmark suite, issue 6).

Nothing here is a runtime dependency of shmguard. Modules:

- registry:      the named "contenders" (in-process, multi-process, correctness)
- inproc_rows:   in-process peer contenders (floors, limiters, breakers)
- shared_rows:   multi-process / shared-backend peer contenders
- shmguard_rows: shmguard's own contenders (registers nothing if not installed)
- runner:        timing harnesses (in-process batches, barrier-started workers)
- bulkhead_rows: part 5, bulkheads (semaphores per process and shared, shmguard)
- redis_server:  a private redis-server on 127.0.0.1, stopped by pid
- report:        markdown, JSON and PNG output
"""
