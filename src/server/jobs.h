/* A fixed pool of threads that run slow request handlers (snapshot copies, diffs, fsync, login)
 * away from libmicrohttpd's event-loop workers, so that one slow request never stalls the other
 * connections of its worker.  Jobs run in submission order; the pool's size bounds how many run
 * at once, and the queue is bounded by the daemon's connection limit (one job per connection). */
#ifndef VMEXPORT_SERVER_JOBS_H
#define VMEXPORT_SERVER_JOBS_H

struct job_pool;

/* A job: fn(arg) runs once on a pool thread. */
typedef void (*job_fn)(void *arg);

/* Start threads threads: 0 or a negative errno. */
int job_pool_new(unsigned threads, struct job_pool **out);
/* Queue fn(arg): 0, or -ESHUTDOWN once the pool is draining, -ENOMEM. */
int job_pool_submit(struct job_pool *p, job_fn fn, void *arg);
/* Refuse new jobs, run every queued one, wait for all of them to finish. */
void job_pool_drain(struct job_pool *p);
/* Drain, stop the threads and free the pool (NULL is fine). */
void job_pool_free(struct job_pool *p);

#endif
