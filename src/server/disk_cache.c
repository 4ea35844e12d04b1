/* The cache of open snapshot disks; see disk_cache.h.  Direct-mapped, one lock. */
#include "server/disk_cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

#define DISK_CACHE_SLOTS  64   /* direct-mapped entries, so at most as many open disks */
#define DISK_CACHE_TTL_MS 2000 /* longest an entry is trusted without asking the catalog */
#define NS_PER_MS         1000000

struct disk_cache_entry {
    char *key; /* NULL: free */
    size_t key_len;
    struct disk_file *file;
    unsigned long long gen;
    int64_t expires_ms; /* CLOCK_MONOTONIC */
};

struct disk_cache {
    pthread_mutex_t lock;
    atomic_ullong gen; /* bumped whenever a ready snapshot stops being ready */
    struct disk_cache_entry e[DISK_CACHE_SLOTS];
};

int disk_cache_new(struct disk_cache **out)
{
    struct disk_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    int r = pthread_mutex_init(&c->lock, NULL);
    if (r) {
        free(c);
        return -r;
    }
    *out = c;
    return 0;
}

struct disk_file *disk_file_new(struct disk_reader *reader, const char *locator)
{
    struct disk_file *f = calloc(1, sizeof(*f));
    if (f && !(f->locator = strdup(locator))) {
        free(f);
        f = NULL;
    }
    if (!f) {
        disk_reader_close(reader);
        return NULL;
    }
    f->reader = reader;
    f->refs = 1;
    f->size = reader->size;
    return f;
}

void disk_file_ref(struct disk_cache *c, struct disk_file *f)
{
    pthread_mutex_lock(&c->lock);
    f->refs++;
    pthread_mutex_unlock(&c->lock);
}

void disk_file_unref(struct disk_cache *c, struct disk_file *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&c->lock);
    bool last = --f->refs == 0;
    pthread_mutex_unlock(&c->lock);
    if (last) {
        disk_reader_close(f->reader);
        free(f->locator);
        free(f);
    }
}

/* Forget every entry. */
static void disk_cache_clear(struct disk_cache *c)
{
    struct disk_cache_entry old[DISK_CACHE_SLOTS];
    pthread_mutex_lock(&c->lock);
    memcpy(old, c->e, sizeof(old));
    memset(c->e, 0, sizeof(c->e));
    pthread_mutex_unlock(&c->lock);
    for (size_t i = 0; i < DISK_CACHE_SLOTS; i++) {
        free(old[i].key);
        disk_file_unref(c, old[i].file);
    }
}

void disk_cache_invalidate(struct disk_cache *c)
{
    if (!c)
        return;
    atomic_fetch_add(&c->gen, 1);
    disk_cache_clear(c);
}

unsigned long long disk_cache_gen(struct disk_cache *c)
{
    return atomic_load(&c->gen);
}

void disk_cache_free(struct disk_cache *c)
{
    if (!c)
        return;
    disk_cache_clear(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int64_t monotonic_ms(void)
{
    return clock_monotonic_ns() / NS_PER_MS;
}

static size_t disk_slot(const char *key, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h % DISK_CACHE_SLOTS;
}

struct disk_file *disk_cache_get(struct disk_cache *c, const char *key, size_t len)
{
    struct disk_cache_entry *e = &c->e[disk_slot(key, len)];
    int64_t now = monotonic_ms();
    struct disk_file *f = NULL;
    pthread_mutex_lock(&c->lock);
    if (e->key && e->key_len == len && !memcmp(e->key, key, len) &&
        e->gen == atomic_load(&c->gen) && now < e->expires_ms) {
        f = e->file;
        f->refs++;
    }
    pthread_mutex_unlock(&c->lock);
    return f;
}

void disk_cache_put(struct disk_cache *c, const char *key, size_t len, struct disk_file *f,
                    unsigned long long gen)
{
    struct disk_cache_entry n = {.key = malloc(len),
                                 .key_len = len,
                                 .file = f,
                                 .gen = gen,
                                 .expires_ms = monotonic_ms() + DISK_CACHE_TTL_MS};
    if (!n.key)
        return;
    memcpy(n.key, key, len);
    struct disk_cache_entry *e = &c->e[disk_slot(key, len)], old = {0};
    pthread_mutex_lock(&c->lock);
    if (gen == atomic_load(&c->gen)) {
        f->refs++;
        old = *e;
        *e = n;
        n.key = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    free(n.key);
    free(old.key);
    disk_file_unref(c, old.file);
}
