/* Progress bars and JSON progress lines; see progress.h. */
#include "cli/progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "core/jsonw.h"

/* Redraw at most this often (seconds). */
#define PROGRESS_INTERVAL 0.2
#define BAR_WIDTH         30

double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void progress_init(struct progress *p, const char *what, uint64_t total, bool json)
{
    p->what = what;
    p->total = total;
    atomic_store(&p->done, 0);
    p->json = json;
    p->tty = !json && isatty(STDERR_FILENO);
    p->start = p->last_draw = progress_now();
    pthread_mutex_init(&p->lock, NULL);
}

static void draw(struct progress *p, double now, bool final)
{
    uint64_t done = atomic_load(&p->done);
    double secs = now - p->start;
    double rate = secs > 0 ? (double)done / secs : 0;
    double frac = p->total ? (double)done / (double)p->total : 1;
    if (frac > 1)
        frac = 1;
    if (p->json) {
        bool first = true;
        putchar('{');
        jw_kv_str(stdout, &first, "type", "progress");
        jw_kv_str(stdout, &first, "what", p->what);
        jw_kv_u64(stdout, &first, "bytes_done", done);
        jw_kv_u64(stdout, &first, "bytes_total", p->total);
        jw_key(stdout, &first, "seconds");
        printf("%.3f}\n", secs);
        fflush(stdout);
        return;
    }
    if (!p->tty)
        return;
    int filled = (int)(frac * BAR_WIDTH);
    double eta = rate > 0 && p->total > done ? (double)(p->total - done) / rate : 0;
    fprintf(stderr, "\r%s [", p->what);
    for (int i = 0; i < BAR_WIDTH; i++)
        fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %5.1f%% %8.1f MiB  %7.1f MiB/s  ETA %4.0fs%s", frac * 100,
            (double)done / 1048576.0, rate / 1048576.0, eta, final ? "\n" : "");
    fflush(stderr);
}

void progress_add(struct progress *p, uint64_t bytes)
{
    atomic_fetch_add(&p->done, bytes);
    if (!p->tty && !p->json)
        return;
    double now = progress_now();
    if (now - p->last_draw < PROGRESS_INTERVAL || pthread_mutex_trylock(&p->lock) != 0)
        return;
    if (now - p->last_draw >= PROGRESS_INTERVAL) {
        p->last_draw = now;
        draw(p, now, false);
    }
    pthread_mutex_unlock(&p->lock);
}

void progress_finish(struct progress *p)
{
    pthread_mutex_lock(&p->lock);
    draw(p, progress_now(), true);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_destroy(&p->lock);
}

void progress_sink_finish(struct progress_sink *s)
{
    if (s->started)
        progress_finish(&s->p);
    s->started = false;
}

static void sink_begin(void *sink, const char *what, uint64_t total)
{
    struct progress_sink *s = sink;
    (void)what;
    progress_sink_finish(s);
    progress_init(&s->p, s->what, total, s->json);
    s->started = true;
}

static void sink_add(void *sink, uint64_t bytes)
{
    struct progress_sink *s = sink;
    if (s->started)
        progress_add(&s->p, bytes);
}

static void sink_end(void *sink, const char *what)
{
    (void)what;
    progress_sink_finish(sink);
}

struct backup_progress progress_sink_callbacks(struct progress_sink *s)
{
    return (struct backup_progress){
        .begin = sink_begin, .add = sink_add, .end = sink_end, .opaque = s};
}
