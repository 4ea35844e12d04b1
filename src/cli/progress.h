/* Progress reporting of long commands: a bar on a terminal (bytes, rate, ETA), JSON lines with
 * --json, nothing otherwise.  Thread-safe: workers add bytes, one of them redraws. */
#ifndef VMEXPORT_CLI_PROGRESS_H
#define VMEXPORT_CLI_PROGRESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backup/progress.h"

struct progress {
    const char *what;
    uint64_t total;
    atomic_ullong done;
    bool tty, json;
    double start, last_draw;
    pthread_mutex_t lock;
};

void progress_init(struct progress *p, const char *what, uint64_t total, bool json);
void progress_add(struct progress *p, uint64_t bytes);
void progress_finish(struct progress *p);

/* A progress driven by an engine's struct backup_progress: progress_sink_callbacks(&sink) gives
 * the callbacks; every begin starts a bar of that total, every end (or progress_sink_finish)
 * ends the bar begun. */
struct progress_sink {
    struct progress p;
    const char *what;
    bool json, started;
};
struct backup_progress progress_sink_callbacks(struct progress_sink *s);
void progress_sink_finish(struct progress_sink *s);

/* Seconds since an arbitrary start, monotonic. */
double progress_now(void);

#endif
