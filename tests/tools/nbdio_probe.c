/* Drives core/nbdio.c for tests/integration/test-nbdio.sh against a real NBD server:
 *
 *   nbdio_probe SOCKET EXPORT read OUT THREADS NCONN   the whole export into the file OUT, read by
 *                                                    THREADS threads in uneven pieces over at
 *                                                    most NCONN connections
 *   nbdio_probe SOCKET EXPORT map CONTEXT [CONTEXT2]   "OFFSET LENGTH FLAGS" per run of CONTEXT
 *                                                    (CONTEXT2: also asked at connect)
 *   nbdio_probe SOCKET EXPORT open CONTEXT...          connect asking for the contexts; prints
 *                                                    the error on failure (exit 1)
 *   nbdio_probe uri SOCKET EXPORT                    the URI, then the socket and export parsed
 *                                                    back from it
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/nbdio.h"

/* Uneven piece sizes, so that reads straddle the server's clusters and the walk's requests. */
static const size_t piece_sizes[] = {4096, 65536 + 512, 1 << 20, 3 * 65536 + 4096, 512};

struct reader {
    struct nbdio *n;
    char *buf;
    atomic_uint_fast64_t next; /* piece index handed out next */
    atomic_int failed;
};

#define NPIECES (sizeof(piece_sizes) / sizeof(piece_sizes[0]))

/* The piece numbered i: [*off, *off + *len). */
static int piece(uint64_t size, uint64_t i, uint64_t *off, size_t *len)
{
    uint64_t cycle = 0, o = 0;
    for (size_t k = 0; k < NPIECES; k++)
        cycle += piece_sizes[k];
    o = i / NPIECES * cycle;
    for (size_t k = 0; k < i % NPIECES; k++)
        o += piece_sizes[k];
    if (o >= size)
        return -1;
    size_t l = piece_sizes[i % NPIECES];
    *off = o;
    *len = size - o < l ? (size_t)(size - o) : l;
    return 0;
}

static void *read_thread(void *arg)
{
    struct reader *r = arg;
    uint64_t size = nbdio_size(r->n);
    for (;;) {
        uint64_t i = atomic_fetch_add(&r->next, 1), off;
        size_t len;
        if (piece(size, i, &off, &len) < 0)
            return NULL;
        int rc = nbdio_pread(r->n, r->buf + off, len, off);
        if (rc < 0) {
            fprintf(stderr, "pread %llu+%zu: %s\n", (unsigned long long)off, len, strerror(-rc));
            atomic_store(&r->failed, 1);
            return NULL;
        }
    }
}

static int print_run(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    (void)opaque;
    printf("%llu %llu %u\n", (unsigned long long)off, (unsigned long long)len, flags);
    return 0;
}

int main(int argc, char **argv)
{
    char err[512] = "";
    if (argc == 4 && strcmp(argv[1], "uri") == 0) {
        char *uri = nbdio_uri(argv[2], argv[3]), *sock = NULL, *exp = NULL;
        if (!uri || nbdio_uri_parse(uri, &sock, &exp) < 0)
            return 1;
        printf("%s\n%s\n%s\n", uri, sock, exp);
        free(uri);
        free(sock);
        free(exp);
        return 0;
    }
    if (argc < 5)
        return 2;
    const char *sock = argv[1], *exp = argv[2], *cmd = argv[3];
    struct nbdio *n = NULL;
    int rc;
    if (strcmp(cmd, "read") == 0 && argc == 7) {
        unsigned threads = (unsigned)atoi(argv[5]);
        rc = nbdio_open(sock, exp, NULL, (unsigned)atoi(argv[6]), &n, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        struct reader r = {.n = n, .buf = malloc(nbdio_size(n) + 1)};
        pthread_t tids[64];
        if (!r.buf || threads == 0 || threads > 64)
            return 2;
        for (unsigned i = 0; i < threads; i++)
            pthread_create(&tids[i], NULL, read_thread, &r);
        for (unsigned i = 0; i < threads; i++)
            pthread_join(tids[i], NULL);
        FILE *f = fopen(argv[4], "wbe");
        if (!f || fwrite(r.buf, 1, nbdio_size(n), f) != nbdio_size(n) || fclose(f) != 0)
            return 1;
        free(r.buf);
        nbdio_close(n);
        return atomic_load(&r.failed) ? 1 : 0;
    }
    if (strcmp(cmd, "map") == 0 && (argc == 5 || argc == 6)) {
        const char *contexts[] = {argv[4], argc == 6 ? argv[5] : NULL, NULL};
        rc = nbdio_open(sock, exp, contexts, 1, &n, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        rc = nbdio_block_status(n, argv[4], 0, nbdio_size(n), print_run, NULL);
        nbdio_close(n);
        if (rc < 0)
            fprintf(stderr, "block status: %s\n", strerror(-rc));
        return rc < 0 ? 1 : 0;
    }
    if (strcmp(cmd, "open") == 0) {
        rc = nbdio_open(sock, exp, (const char *const *)&argv[4], 1, &n, err, sizeof(err));
        if (rc < 0) {
            printf("%s (%s)\n", err, strerror(-rc));
            return 1;
        }
        nbdio_close(n);
        return 0;
    }
    return 2;
}
