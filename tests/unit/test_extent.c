/* Unit tests for the extent algebra (src/core/extent.c): validation and building of lists,
 * squash, intersect, subtract, align, byte counts and the diff of two extent maps, including
 * edge cases near EXTENT_OFFSET_MAX, plus randomized property tests against simple models.
 *
 * The randomized tests print their seed as a TAP comment ("# seed=N"); run with
 * VMEXPORT_SEED=N to replay a failure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/extent.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define OMAX EXTENT_OFFSET_MAX

#define SH EXTENT_SHARED
#define UW EXTENT_UNWRITTEN
#define UK EXTENT_PHYS_UNKNOWN

/* Some physical addresses. */
#define P (1ull << 30)
#define Q (5ull << 30)
#define R (9ull << 30)

/* A literal array of extents ({start, length, physical, flags} each) and its length. */
#define EXTENTS(...)                                                                               \
    (const struct extent[]){__VA_ARGS__}, ARRAY_LEN(((const struct extent[]){__VA_ARGS__}))

/* A literal array of {start, length} ranges and its length. */
#define RANGES(...)                                                                                \
    (const uint64_t[][2]){__VA_ARGS__}, ARRAY_LEN(((const uint64_t[][2]){__VA_ARGS__}))

#define NO_RANGES NULL, 0

/* Fails the current test with a message when cond does not hold. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            print_message("# check failed: %s\n", #cond);                                          \
            print_message("# " __VA_ARGS__);                                                       \
            print_message("\n");                                                                   \
            _fail(__FILE__, __LINE__);                                                             \
        }                                                                                          \
    } while (0)

DEFINE_VECTOR_TYPE(u64_vector, uint64_t);

/* Lists for one test, freed by the teardown even when the test fails. */
struct fixture {
    extent_list a, b;       /* inputs: for a diff, a is the base map and b the new one */
    extent_list out, out2;  /* outputs: for a diff, out is changed and out2 zeroed */
    extent_list raw, raw2;  /* diff ranges exactly as extent_diff_stream() emitted them */
    u64_vector points;      /* scratch for the diff model */
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    extent_list_reset(&f->a);
    extent_list_reset(&f->b);
    extent_list_reset(&f->out);
    extent_list_reset(&f->out2);
    extent_list_reset(&f->raw);
    extent_list_reset(&f->raw2);
    u64_vector_reset(&f->points);
    free(f);
    return 0;
}

/* Replaces the contents of l by the given extents as they are, bypassing the checks and the
 * merging of extent_list_add(). */
static void list_fill(extent_list *l, const struct extent *e, size_t n)
{
    extent_list_clear(l);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(extent_list_append(l, e[i]), 0);
}

static void list_print(const char *what, const struct extent *e, size_t n)
{
    print_message("# %s: %zu extents\n", what, n);
    for (size_t i = 0; i < n; i++)
        print_message("#   [%" PRIu64 ", %" PRIu64 ") length %" PRIu64 " phys %" PRIu64
                      " flags %#x\n",
                      e[i].start, e[i].start + e[i].length, e[i].length, e[i].physical,
                      e[i].flags);
}

/* l must hold exactly the extents want; physical addresses are compared unless the extent is
 * EXTENT_PHYS_UNKNOWN. */
#define assert_extents(l, ...) assert_extents_at(__FILE__, __LINE__, (l), __VA_ARGS__)
static void assert_extents_at(const char *file, int line, const extent_list *l,
                              const struct extent *want, size_t n)
{
    bool ok = l->len == n;
    for (size_t i = 0; ok && i < n; i++) {
        const struct extent *g = &l->ptr[i], *w = &want[i];
        ok = g->start == w->start && g->length == w->length && g->flags == w->flags &&
             ((w->flags & EXTENT_PHYS_UNKNOWN) || g->physical == w->physical);
    }
    if (!ok) {
        list_print("got", l->ptr, l->len);
        list_print("expected", want, n);
        _fail(file, line);
    }
}

/* l must hold exactly the ranges want (start and length only). */
#define assert_ranges(l, ...) assert_ranges_at(__FILE__, __LINE__, (l), __VA_ARGS__)
static void assert_ranges_at(const char *file, int line, const extent_list *l,
                             const uint64_t (*want)[2], size_t n)
{
    bool ok = l->len == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = l->ptr[i].start == want[i][0] && l->ptr[i].length == want[i][1];
    if (!ok) {
        list_print("got", l->ptr, l->len);
        print_message("# expected: %zu ranges\n", n);
        for (size_t i = 0; i < n; i++)
            print_message("#   [%" PRIu64 ", %" PRIu64 ")\n", want[i][0], want[i][0] + want[i][1]);
        _fail(file, line);
    }
}

/* ---- Randomness ------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform-enough in [0, n); 0 for n == 0. */
static uint64_t rnd(uint64_t n)
{
    return n ? rng_next() % n : 0;
}

static bool chance(unsigned percent)
{
    return rnd(100) < percent;
}

/* Seeds the generator from VMEXPORT_SEED or the clock, and prints the seed. */
static void rng_seed(void)
{
    static bool have;
    static uint64_t seed;
    if (!have) {
        const char *s = getenv("VMEXPORT_SEED");
        if (s && *s) {
            seed = strtoull(s, NULL, 0);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            seed = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^
                   ((uint64_t)getpid() << 40);
        }
        have = true;
    }
    print_message("# seed=%" PRIu64 "\n", seed);
    rng_state = seed;
}

/* ---- extent_list_validate --------------------------------------------------------------- */

static void test_validate_empty(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(extent_list_validate(&f->a), 0);
}

static void test_validate_sorted_adjacent(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, SH}, {12288, 100, 0, UW | UK},
                             {12388, 1, 7, 0}));
    assert_int_equal(extent_list_validate(&f->a), 0);
}

static void test_validate_zero_length(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 0, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 0, P, 0}, {8192, 4096, Q, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({OMAX, 0, 0, UK}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
}

static void test_validate_overlap(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 8192, P, 0}, {4096, 8192, Q, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {0, 4096, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 8192, P, 0}, {1, 1, Q, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 4096, Q, 0}, {12287, 2, R, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
}

static void test_validate_unsorted(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({8192, 4096, P, 0}, {0, 4096, Q, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {16384, 4096, P, 0}, {8192, 4096, Q, 0}));
    assert_int_equal(extent_list_validate(&f->a), -EINVAL);
}

static void test_validate_range(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, OMAX, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), 0);
    list_fill(&f->a, EXTENTS({OMAX - 4096, 4096, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), 0);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {OMAX - 1, 1, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), 0);

    list_fill(&f->a, EXTENTS({OMAX - 4095, 4096, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
    list_fill(&f->a, EXTENTS({OMAX, 1, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
    list_fill(&f->a, EXTENTS({OMAX + 1, 10, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
    list_fill(&f->a, EXTENTS({UINT64_MAX, 1, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
    /* The end would wrap around to a small number. */
    list_fill(&f->a, EXTENTS({4096, UINT64_MAX - 4095, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
    list_fill(&f->a, EXTENTS({1, UINT64_MAX, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {OMAX - 10, 20, Q, 0}));
    assert_int_equal(extent_list_validate(&f->a), -ERANGE);
}

/* ---- extent_list_add, extent_list_add_range --------------------------------------------- */

static void add(extent_list *l, uint64_t start, uint64_t length, uint64_t physical, uint32_t flags)
{
    struct extent e = {.start = start, .length = length, .physical = physical, .flags = flags};
    assert_int_equal(extent_list_add(l, &e), 0);
}

static int try_add(extent_list *l, uint64_t start, uint64_t length, uint64_t physical,
                   uint32_t flags)
{
    struct extent e = {.start = start, .length = length, .physical = physical, .flags = flags};
    return extent_list_add(l, &e);
}

static void test_add_merge(void **state)
{
    struct fixture *f = *state;
    add(&f->a, 0, 4096, P, 0);
    add(&f->a, 4096, 4096, P + 4096, 0);          /* contiguous: merged */
    add(&f->a, 8192, 4096, P + 5 * 4096, 0);      /* physically apart */
    add(&f->a, 12288, 4096, P + 6 * 4096, SH);    /* contiguous, other flags */
    add(&f->a, 20480, 4096, P + 7 * 4096, SH);    /* contiguous physically, not logically */
    add(&f->a, 24576, 4096, P + 8 * 4096, UW);    /* unwritten is not data */
    add(&f->a, 28672, 4096, P + 9 * 4096, UW);    /* unwritten runs merge too */
    add(&f->a, 32768, 100, 0, UK);
    add(&f->a, 32868, 50, 12345, UK);             /* unknown addresses merge when touching */
    assert_extents(&f->a, EXTENTS({0, 8192, P, 0}, {8192, 4096, P + 5 * 4096, 0},
                                  {12288, 4096, P + 6 * 4096, SH}, {20480, 4096, P + 7 * 4096, SH},
                                  {24576, 8192, P + 8 * 4096, UW}, {32768, 150, 0, UK}));
    assert_int_equal(extent_list_validate(&f->a), 0);
}

static void test_add_reject(void **state)
{
    struct fixture *f = *state;
    add(&f->a, 4096, 4096, P, 0);
    assert_int_equal(try_add(&f->a, 0, 4096, Q, 0), -EINVAL);        /* before the last */
    assert_int_equal(try_add(&f->a, 4096, 4096, P, 0), -EINVAL);     /* the same again */
    assert_int_equal(try_add(&f->a, 6000, 4096, Q, 0), -EINVAL);     /* overlapping */
    assert_int_equal(try_add(&f->a, 8191, 1, P + 4095, 0), -EINVAL); /* last byte again */
    assert_int_equal(try_add(&f->a, 8192, 0, P + 4096, 0), -EINVAL); /* empty */
    assert_int_equal(try_add(&f->a, OMAX - 10, 11, Q, 0), -ERANGE);
    assert_int_equal(try_add(&f->a, UINT64_MAX - 1, 10, Q, 0), -ERANGE);
    assert_int_equal(try_add(&f->a, 8192, UINT64_MAX - 8191, Q, 0), -ERANGE);
    assert_extents(&f->a, EXTENTS({4096, 4096, P, 0}));

    add(&f->a, OMAX - 4096, 4096, 0, UK);
    assert_int_equal(try_add(&f->a, OMAX, 1, 0, UK), -ERANGE);
    assert_int_equal(try_add(&f->a, OMAX - 1, 1, 0, UK), -EINVAL);
    assert_extents(&f->a, EXTENTS({4096, 4096, P, 0}, {OMAX - 4096, 4096, 0, UK}));
}

static void test_add_near_max(void **state)
{
    struct fixture *f = *state;
    add(&f->a, OMAX - 8192, 4096, P, 0);
    add(&f->a, OMAX - 4096, 4095, P + 4096, 0);
    add(&f->a, OMAX - 1, 1, P + 8191, 0);
    assert_extents(&f->a, EXTENTS({OMAX - 8192, 8192, P, 0}));
    assert_int_equal(extent_list_validate(&f->a), 0);
    assert_int_equal(extent_end(&f->a.ptr[0]), OMAX);
}

/* A capacity limit on the list is honoured: appending past it fails with -E2BIG, while merging
 * into the last extent needs no room. */
static void test_add_capacity_limit(void **state)
{
    struct fixture *f = *state;
    f->a.max_len = 2;
    add(&f->a, 0, 4096, P, 0);
    add(&f->a, 8192, 4096, Q, 0);
    add(&f->a, 12288, 4096, Q + 4096, 0);
    assert_int_equal(try_add(&f->a, 20480, 4096, R, 0), -E2BIG);
    assert_int_equal(try_add(&f->a, 32768, 4096, R, 0), -E2BIG);
    assert_extents(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 8192, Q, 0}));
}

static void test_add_range(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(extent_list_add_range(&f->a, 0, 100), 0);
    assert_int_equal(extent_list_add_range(&f->a, 100, 50), 0);
    assert_int_equal(extent_list_add_range(&f->a, 200, 10), 0);
    assert_int_equal(extent_list_add_range(&f->a, 150, 50), -EINVAL);
    assert_int_equal(extent_list_add_range(&f->a, 205, 10), -EINVAL);
    assert_int_equal(extent_list_add_range(&f->a, 210, 0), -EINVAL);
    assert_int_equal(extent_list_add_range(&f->a, OMAX - 5, 6), -ERANGE);
    assert_int_equal(extent_list_add_range(&f->a, 210, UINT64_MAX - 100), -ERANGE);
    assert_int_equal(extent_list_add_range(&f->a, 210, 10), 0);
    assert_int_equal(extent_list_add_range(&f->a, OMAX - 5, 5), 0);
    assert_extents(&f->a, EXTENTS({0, 150, 0, UK}, {200, 20, 0, UK}, {OMAX - 5, 5, 0, UK}));

    /* A plain range does not merge into an extent with a physical address. */
    add(&f->b, 0, 4096, P, 0);
    assert_int_equal(extent_list_add_range(&f->b, 4096, 4096), 0);
    assert_extents(&f->b, EXTENTS({0, 4096, P, 0}, {4096, 4096, 0, UK}));
}

static void test_list_source_sink(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, SH}, {65536, 1, R, UW}));
    struct extent_list_cursor c;
    struct extent_source src = extent_list_source(&c, &f->a);
    struct extent e;
    for (size_t i = 0; i < f->a.len; i++) {
        assert_int_equal(src.next(src.opaque, &e), 1);
        assert_memory_equal(&e, &f->a.ptr[i], sizeof(e));
    }
    assert_int_equal(src.next(src.opaque, &e), 0);
    assert_int_equal(src.next(src.opaque, &e), 0);

    struct extent_sink sink = extent_list_sink(&f->out);
    assert_int_equal(sink.emit(sink.opaque, 0, 4096), 0);
    assert_int_equal(sink.emit(sink.opaque, 4096, 4096), 0);
    assert_int_equal(sink.emit(sink.opaque, 16384, 1), 0);
    assert_int_equal(sink.emit(sink.opaque, 8192, 1), -EINVAL);
    assert_ranges(&f->out, RANGES({0, 8192}, {16384, 1}));
}

/* ---- extent_list_squash ----------------------------------------------------------------- */

static void test_squash_empty(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_int_equal(f->a.len, 0);
}

static void test_squash_contiguous(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, P + 4096, 0}, {8192, 8192, P + 8192, 0},
                             {65536, 4096, Q, 0}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 16384, P, 0}, {65536, 4096, Q, 0}));
}

static void test_squash_discontiguous(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}, {8192, 4096, Q + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 12288, 0, UK}));
    assert_int_equal(f->a.ptr[0].physical, P); /* the first address is kept */

    /* A piece of unknown address makes the whole unknown. */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, P + 4096, UK}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, 0, UK}));
    list_fill(&f->a, EXTENTS({0, 4096, P, UK}, {4096, 4096, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, 0, UK}));
}

static void test_squash_kinds(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, P + 4096, UW},
                             {8192, 4096, Q, UW}, {12288, 4096, P + 12288, 0},
                             {20480, 4096, P + 16384, 0}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 8192, P + 4096, UW | UK},
                                  {12288, 4096, P + 12288, 0}, {20480, 4096, P + 16384, 0}));
}

static void test_squash_shared(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, SH}, {4096, 4096, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, P, SH}));
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, P + 4096, SH}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, P, SH}));
    list_fill(&f->a, EXTENTS({0, 4096, P, SH | UW}, {4096, 4096, Q, UW}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, P, SH | UW | UK}));
}

static void test_squash_near_max(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({OMAX - 8192, 4096, P, 0}, {OMAX - 4096, 4096, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), 0);
    assert_extents(&f->a, EXTENTS({OMAX - 8192, 8192, P, 0}));
}

static void test_squash_invalid(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 8192, P, 0}, {4096, 4096, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), -EINVAL);
    assert_int_equal(f->a.len, 2);
    list_fill(&f->a, EXTENTS({4096, 4096, P, 0}, {0, 4096, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 0, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, UINT64_MAX - 4095, P + 4096, 0}));
    assert_int_equal(extent_list_squash(&f->a), -ERANGE);
    assert_int_equal(f->a.len, 2);
}

/* ---- extent_list_intersect -------------------------------------------------------------- */

static void test_intersect_basic(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 16384, P, SH}, {32768, 8192, Q, UW}));
    list_fill(&f->b, EXTENTS({4096, 4096, R, 0}, {12288, 24576, 0, UK}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({4096, 4096, P + 4096, SH}, {12288, 4096, P + 12288, SH},
                                    {32768, 4096, Q, UW}));
}

static void test_intersect_empty(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(extent_list_intersect(&f->b, &f->a, &f->out), 0);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(extent_list_intersect(&f->b, &f->b, &f->out), 0);
    assert_int_equal(f->out.len, 0);

    /* Adjacent is not overlapping. */
    list_fill(&f->b, EXTENTS({4096, 4096, 0, UK}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(extent_list_intersect(&f->b, &f->a, &f->out), 0);
    assert_int_equal(f->out.len, 0);
}

static void test_intersect_many(void **state)
{
    struct fixture *f = *state;
    /* One a cut by adjacent b's comes back whole. */
    list_fill(&f->a, EXTENTS({0, 12288, P, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, 0, UK}, {4096, 4096, 0, 0}, {8192, 4096, 0, UW}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({0, 12288, P, 0}));

    /* One b spanning many a's gives the a's. */
    extent_list_clear(&f->out);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}, {16384, 100, R, UW | SH}));
    list_fill(&f->b, EXTENTS({0, MIB, 0, UK}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}, {16384, 100, R, UW | SH}));

    /* Many small pieces. */
    extent_list_clear(&f->out);
    list_fill(&f->a, EXTENTS({10, 100, P, 0}, {200, 100, Q, 0}));
    list_fill(&f->b, EXTENTS({0, 20, 0, UK}, {30, 10, 0, UK}, {105, 100, 0, UK}, {250, 1, 0, UK},
                             {299, 10, 0, UK}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({10, 10, P, 0}, {30, 10, P + 20, 0}, {105, 5, P + 95, 0},
                                    {200, 5, Q, 0}, {250, 1, Q + 50, 0}, {299, 1, Q + 99, 0}));
}

static void test_intersect_near_max(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({OMAX - 8192, 8192, P, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, 0, UK}, {OMAX - 4096, 4096, 0, UK}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({OMAX - 4096, 4096, P + 4096, 0}));
}

static void test_intersect_invalid(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 8192, P, 0}, {4096, 4096, Q, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, 0, UK}));
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), -EINVAL);
    assert_int_equal(extent_list_intersect(&f->b, &f->a, &f->out), -EINVAL);
    list_fill(&f->a, EXTENTS({4096, 4096, P, 0}, {0, 4096, Q, 0}));
    assert_int_equal(extent_list_intersect(&f->b, &f->a, &f->out), -EINVAL);
    list_fill(&f->a, EXTENTS({0, 0, P, 0}));
    assert_int_equal(extent_list_intersect(&f->b, &f->a, &f->out), -EINVAL);
    list_fill(&f->a, EXTENTS({OMAX, 4096, P, 0}));
    assert_int_equal(extent_list_intersect(&f->b, &f->a, &f->out), -ERANGE);
    assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), -ERANGE);
    assert_int_equal(f->out.len, 0);
}

/* ---- extent_list_subtract --------------------------------------------------------------- */

static void test_subtract_basic(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 16384, P, 0}));
    list_fill(&f->b, EXTENTS({4096, 4096, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({0, 4096, P, 0}, {8192, 8192, P + 8192, 0}));

    extent_list_clear(&f->out);
    list_fill(&f->a, EXTENTS({0, 8192, P, SH}, {16384, 8192, Q, UW}));
    list_fill(&f->b, EXTENTS({0, 1024, 0, UK}, {2048, 1024, 0, UK}, {6144, 12288, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({1024, 1024, P + 1024, SH}, {3072, 3072, P + 3072, SH},
                                    {18432, 6144, Q + 2048, UW}));
}

static void test_subtract_edges(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, SH}, {12288, 4096, R, UW}));

    /* Nothing to take away: a copy (not re-merged, a's extents are not mergeable). */
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, f->a.ptr, f->a.len);

    /* From nothing. */
    extent_list_clear(&f->out);
    assert_int_equal(extent_list_subtract(&f->b, &f->a, &f->out), 0);
    assert_int_equal(f->out.len, 0);

    /* Everything. */
    list_fill(&f->b, EXTENTS({0, 65536, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
    assert_int_equal(f->out.len, 0);

    /* Only touching. */
    list_fill(&f->b, EXTENTS({8192, 4096, 0, UK}, {16384, 4096, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, f->a.ptr, f->a.len);

    /* Near the largest offset. */
    extent_list_clear(&f->out);
    list_fill(&f->a, EXTENTS({OMAX - 8192, 8192, P, 0}));
    list_fill(&f->b, EXTENTS({OMAX - 4096, 1, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
    assert_extents(&f->out, EXTENTS({OMAX - 8192, 4096, P, 0}, {OMAX - 4095, 4095, P + 4097, 0}));
}

static void test_subtract_invalid(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}));
    list_fill(&f->b, EXTENTS({0, 8192, 0, UK}, {4096, 4096, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), -EINVAL);
    assert_int_equal(extent_list_subtract(&f->b, &f->a, &f->out), -EINVAL);
    list_fill(&f->b, EXTENTS({8192, 4096, 0, UK}, {0, 4096, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), -EINVAL);
    list_fill(&f->b, EXTENTS({8192, 0, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), -EINVAL);
    list_fill(&f->b, EXTENTS({8192, OMAX, 0, UK}));
    assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), -ERANGE);
    assert_int_equal(f->out.len, 0);
}

/* ---- extent_list_align ------------------------------------------------------------------ */

static void test_align_aligned(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({4096, 4096, P, SH}, {16384, 8192, Q, UW}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({4096, 4096, P, SH}, {16384, 8192, Q, UW}));

    /* Touching and mergeable pieces merge, keeping their address. */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, P + 4096, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, P, 0}));

    /* Touching but not mergeable: merged, address lost. */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, 0, UK}));

    assert_int_equal(extent_list_align(&f->b, 4096, OMAX), 0);
    assert_int_equal(f->b.len, 0);
}

static void test_align_round(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({100, 200, P, 0}, {10000, 100, Q, SH}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, 0, UK}, {8192, 4096, 0, SH | UK}));

    /* Overlapping after rounding: merged; data wins over unwritten. */
    list_fill(&f->a, EXTENTS({100, 100, P, 0}, {3000, 2000, Q, 0}, {9000, 10, R, UW}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 12288, 0, UK}));

    list_fill(&f->a, EXTENTS({100, 100, P, UW}, {5000, 100, Q, UW}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, 0, UW | UK}));

    list_fill(&f->a, EXTENTS({100, 100, P, UW}, {5000, 100, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 8192, 0, UK}));

    /* Not a power of two. */
    list_fill(&f->a, EXTENTS({100, 100, P, 0}, {6100, 3000, Q, 0}, {15000, 3000, R, 0}));
    assert_int_equal(extent_list_align(&f->a, 3000, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 3000, 0, UK}, {6000, 6000, 0, UK}, {15000, 3000, R, 0}));
    /* Touching after rounding: merged. */
    list_fill(&f->a, EXTENTS({100, 100, P, 0}, {6100, 3000, Q, 0}, {12000, 3000, R, 0}));
    assert_int_equal(extent_list_align(&f->a, 3000, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, 3000, 0, UK}, {6000, 9000, 0, UK}));

    /* Chunk 1 changes nothing. */
    list_fill(&f->a, EXTENTS({1, 2, P, 0}, {5, 1, Q, SH}));
    assert_int_equal(extent_list_align(&f->a, 1, OMAX), 0);
    assert_extents(&f->a, EXTENTS({1, 2, P, 0}, {5, 1, Q, SH}));
}

static void test_align_limit(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 1000, Q, 0}, {20000, 100, R, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, 10000), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 1808, 0, UK}));

    list_fill(&f->a, EXTENTS({0, 8192, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, 4096), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, 0, UK}));

    list_fill(&f->a, EXTENTS({0, 8192, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, 0), 0);
    assert_int_equal(f->a.len, 0);

    list_fill(&f->a, EXTENTS({8192, 100, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, 8192), 0);
    assert_int_equal(f->a.len, 0);

    /* Wholly past the limit, even though rounding down would reach below it: dropped. */
    list_fill(&f->a, EXTENTS({6000, 1000, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, 5000), 0);
    assert_int_equal(f->a.len, 0);
}

/* A limit that is not a multiple of the chunk (a disk whose size is not): an extent that ends
 * exactly at it is kept as it is, address included; one that starts exactly at it is dropped,
 * even though rounding its start down would land below the limit; one that ends a byte short
 * of it, or crosses it, is rounded to end at it. */
static void test_align_unaligned_limit(void **state)
{
    struct fixture *f = *state;
    const uint64_t limit = 10000; /* 2 * 4096 + 1808 */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 1808, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 1808, Q, 0}));

    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {limit, 100, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, P, 0}));
    list_fill(&f->a, EXTENTS({limit, 1, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_int_equal(f->a.len, 0);

    list_fill(&f->a, EXTENTS({8192, 1807, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_extents(&f->a, EXTENTS({8192, 1808, 0, UK}));

    list_fill(&f->a, EXTENTS({9000, 2000, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_extents(&f->a, EXTENTS({8192, 1808, 0, UK}));

    /* Ending at the limit after an extent that rounds up onto it: merged, ending at it. */
    list_fill(&f->a, EXTENTS({4000, 96, P, 0}, {8192, 1808, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_extents(&f->a, EXTENTS({0, 4096, 0, UK}, {8192, 1808, Q, 0}));
    list_fill(&f->a, EXTENTS({4000, 200, P, 0}, {9000, 1000, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, limit), 0);
    assert_extents(&f->a, EXTENTS({0, limit, 0, UK}));
}

static void test_align_near_max(void **state)
{
    struct fixture *f = *state;
    /* OMAX is 2^63 - 1: rounding the end up would pass it. */
    list_fill(&f->a, EXTENTS({OMAX - 100, 100, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), 0);
    assert_extents(&f->a, EXTENTS({OMAX - 4095, 4095, 0, UK}));

    /* The same with no limit at all. */
    list_fill(&f->a, EXTENTS({OMAX - 100, 100, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, UINT64_MAX), 0);
    assert_int_equal(extent_list_validate(&f->a), 0);
    assert_extents(&f->a, EXTENTS({OMAX - 4095, 4095, 0, UK}));

    /* Huge chunks. */
    list_fill(&f->a, EXTENTS({5, 5, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 1ull << 62, UINT64_MAX), 0);
    assert_extents(&f->a, EXTENTS({0, 1ull << 62, 0, UK}));
    list_fill(&f->a, EXTENTS({5, 5, P, 0}, {(1ull << 62) + 1, 1, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 1ull << 62, OMAX), 0);
    assert_extents(&f->a, EXTENTS({0, OMAX, 0, UK}));
    list_fill(&f->a, EXTENTS({5, 5, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 1ull << 63, UINT64_MAX), 0);
    assert_extents(&f->a, EXTENTS({0, OMAX, 0, UK}));
    list_fill(&f->a, EXTENTS({5, 5, P, 0}, {OMAX - 1, 1, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, UINT64_MAX, UINT64_MAX), 0);
    assert_extents(&f->a, EXTENTS({0, OMAX, 0, UK}));
}

static void test_align_invalid(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 0, OMAX), -EINVAL);
    assert_extents(&f->a, EXTENTS({0, 4096, P, 0}));
    list_fill(&f->a, EXTENTS({100, 100, P, 0}, {150, 100, Q, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), -EINVAL);
    assert_extents(&f->a, EXTENTS({100, 100, P, 0}, {150, 100, Q, 0}));
    list_fill(&f->a, EXTENTS({100, 0, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), -EINVAL);
    list_fill(&f->a, EXTENTS({OMAX, 100, P, 0}));
    assert_int_equal(extent_list_align(&f->a, 4096, OMAX), -ERANGE);
}

/* ---- extent_list_bytes ------------------------------------------------------------------ */

static void test_bytes(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(extent_list_bytes(&f->a), 0);
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 100, Q, UW}, {9000, 1, 0, UK}));
    assert_int_equal(extent_list_bytes(&f->a), 4197);
    list_fill(&f->a, EXTENTS({0, OMAX, P, 0}));
    assert_int_equal(extent_list_bytes(&f->a), OMAX);
    list_fill(&f->a, EXTENTS({0, OMAX - 1, P, 0}, {OMAX - 1, 1, Q, 0}));
    assert_int_equal(extent_list_bytes(&f->a), OMAX);
}

/* ---- extent_list_find ------------------------------------------------------------------- */

static void test_find(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(extent_list_find(&f->a, 0), 0);
    assert_int_equal(extent_list_find(&f->a, OMAX), 0);
    list_fill(&f->a, EXTENTS({4096, 4096, P, 0}, {16384, 100, Q, 0}, {20000, 1, 0, UK}));
    assert_int_equal(extent_list_find(&f->a, 0), 0);     /* before the first */
    assert_int_equal(extent_list_find(&f->a, 4096), 0);  /* its start */
    assert_int_equal(extent_list_find(&f->a, 8191), 0);  /* its last byte */
    assert_int_equal(extent_list_find(&f->a, 8192), 1);  /* its end: the next one */
    assert_int_equal(extent_list_find(&f->a, 12000), 1); /* in a gap */
    assert_int_equal(extent_list_find(&f->a, 16483), 1);
    assert_int_equal(extent_list_find(&f->a, 16484), 2);
    assert_int_equal(extent_list_find(&f->a, 20000), 2);
    assert_int_equal(extent_list_find(&f->a, 20001), 3); /* past the last */
    assert_int_equal(extent_list_find(&f->a, OMAX), 3);
    /* Against a linear scan, on every offset around every boundary of a longer list. */
    extent_list_clear(&f->a);
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(extent_list_add_range(&f->a, i * 3 * KIB, (i % 2 + 1) * KIB), 0);
    for (uint64_t off = 0; off < 310 * KIB; off += KIB / 2) {
        size_t want = 0;
        while (want < f->a.len && extent_end(&f->a.ptr[want]) <= off)
            want++;
        assert_int_equal(extent_list_find(&f->a, off), want);
    }
}

/* ---- The diff model --------------------------------------------------------------------- */

/* What a file reads at some offset: zeros, or the data of a physical address (equal physical
 * addresses hold equal data).  known: the diff may compare the address. */
struct content {
    bool data;
    bool known;
    uint64_t phys;
};

/* The extent of the valid list l containing pos, or NULL. */
static const struct extent *find_extent(const extent_list *l, uint64_t pos)
{
    size_t lo = 0, hi = l->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (extent_end(&l->ptr[mid]) <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < l->len && l->ptr[lo].start <= pos ? &l->ptr[lo] : NULL;
}

/* Does some extent of l overlap [start, end)? */
static bool overlaps(const extent_list *l, uint64_t start, uint64_t end)
{
    if (start >= end)
        return false;
    if (find_extent(l, start))
        return true;
    for (size_t i = 0; i < l->len; i++)
        if (l->ptr[i].start > start)
            return l->ptr[i].start < end;
    return false;
}

static struct content content_at(const extent_list *map, uint64_t size, uint64_t pos)
{
    struct content c = {0};
    const struct extent *e = pos < size ? find_extent(map, pos) : NULL;
    if (e && extent_is_data(e)) {
        c.data = true;
        c.known = !(e->flags & EXTENT_PHYS_UNKNOWN);
        c.phys = e->physical + (pos - e->start);
    }
    return c;
}

static bool content_equal(struct content a, struct content b)
{
    return a.data == b.data && (!a.data || a.phys == b.phys);
}

/* Output ranges must be valid, strictly apart (coalesced) and below the file size. */
static void check_ranges_shape(const extent_list *l, uint64_t size, const char *what)
{
    CHECK(extent_list_validate(l) == 0, "%s ranges are not a valid list", what);
    for (size_t i = 0; i < l->len; i++) {
        CHECK(extent_end(&l->ptr[i]) <= size, "%s range %zu ends at %" PRIu64 " past size %" PRIu64,
              what, i, extent_end(&l->ptr[i]), size);
        CHECK(i == 0 || l->ptr[i].start > extent_end(&l->ptr[i - 1]),
              "%s ranges %zu and %zu touch: not coalesced", what, i - 1, i);
    }
}

static int cmp_u64(const uint64_t *a, const uint64_t *b)
{
    return *a < *b ? -1 : *a > *b;
}

static void add_points(u64_vector *v, const extent_list *l)
{
    for (size_t i = 0; i < l->len; i++) {
        assert_int_equal(u64_vector_append(v, l->ptr[i].start), 0);
        assert_int_equal(u64_vector_append(v, extent_end(&l->ptr[i])), 0);
    }
}

/* Checks a diff result against its definition.  All boundaries of the four lists and the two
 * sizes cut [0, new_size) into segments on each of which every list is constant and contents
 * run linearly with the physical address, so one offset per segment decides the whole segment.
 * On each: changed and zeroed are exactly as defined, and base with the diff applied (new data
 * over changed, zeros over zeroed, zeros past base_size) reads as new. */
static void verify_diff(struct fixture *f, uint64_t base_size, uint64_t new_size)
{
    const extent_list *base = &f->a, *new = &f->b, *changed = &f->out, *zeroed = &f->out2;
    check_ranges_shape(changed, new_size, "changed");
    check_ranges_shape(zeroed, new_size, "zeroed");

    u64_vector *pts = &f->points;
    u64_vector_clear(pts);
    assert_int_equal(u64_vector_append(pts, 0), 0);
    assert_int_equal(u64_vector_append(pts, base_size), 0);
    add_points(pts, base);
    add_points(pts, new);
    add_points(pts, changed);
    add_points(pts, zeroed);
    u64_vector_sort(pts, cmp_u64);

    for (size_t i = 0; i < pts->len; i++) {
        uint64_t pos = pts->ptr[i];
        if (pos >= new_size)
            break;
        if (i > 0 && pos == pts->ptr[i - 1])
            continue;
        struct content cb = content_at(base, base_size, pos);
        struct content cn = content_at(new, new_size, pos);
        bool same = cb.data && cn.data && cb.known && cn.known && cb.phys == cn.phys;
        bool in_changed = find_extent(changed, pos) != NULL;
        bool in_zeroed = find_extent(zeroed, pos) != NULL;

        CHECK(in_changed == (cn.data && !same),
              "at %" PRIu64 ": changed %d, base data %d phys %" PRIu64 " known %d, new data %d"
              " phys %" PRIu64 " known %d",
              pos, in_changed, cb.data, cb.phys, cb.known, cn.data, cn.phys, cn.known);
        CHECK(in_zeroed == (!cn.data && cb.data),
              "at %" PRIu64 ": zeroed %d, base data %d, new data %d", pos, in_zeroed, cb.data,
              cn.data);

        struct content applied = cb;
        if (in_changed)
            applied = cn;
        else if (in_zeroed)
            applied = (struct content){0};
        CHECK(content_equal(applied, cn),
              "at %" PRIu64 ": base with the diff applied reads %s %" PRIu64 ", new reads %s %"
              PRIu64, pos, applied.data ? "data" : "zeros", applied.phys,
              cn.data ? "data" : "zeros", cn.phys);
    }
}

/* A sink appending ranges exactly as emitted, so that missing coalescing shows. */
static int raw_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct extent e = {.start = start, .length = length, .flags = EXTENT_PHYS_UNKNOWN};
    return extent_list_append(opaque, e);
}

/* Diffs f->a (base) against f->b (new) as streams into f->raw and f->raw2, and as lists into
 * f->out (changed) and f->out2 (zeroed); both must agree and pass the model. */
static void run_diff(struct fixture *f, uint64_t base_size, uint64_t new_size)
{
    extent_list_clear(&f->raw);
    extent_list_clear(&f->raw2);
    extent_list_clear(&f->out);
    extent_list_clear(&f->out2);

    struct extent_list_cursor cb, cn;
    struct extent_source sb = extent_list_source(&cb, &f->a);
    struct extent_source sn = extent_list_source(&cn, &f->b);
    struct extent_sink kc = {.emit = raw_emit, .opaque = &f->raw};
    struct extent_sink kz = {.emit = raw_emit, .opaque = &f->raw2};
    assert_int_equal(extent_diff_stream(&sb, base_size, &sn, new_size, &kc, &kz), 0);
    check_ranges_shape(&f->raw, new_size, "streamed changed");
    check_ranges_shape(&f->raw2, new_size, "streamed zeroed");

    assert_int_equal(extent_list_diff(&f->a, base_size, &f->b, new_size, &f->out, &f->out2), 0);
    assert_extents(&f->out, f->raw.ptr, f->raw.len);
    assert_extents(&f->out2, f->raw2.ptr, f->raw2.len);
    verify_diff(f, base_size, new_size);
}

/* run_diff() with expected results. */
#define expect_diff(f, base_size, new_size, ...)                                                   \
    expect_diff_at(__FILE__, __LINE__, (f), (base_size), (new_size), __VA_ARGS__)
static void expect_diff_at(const char *file, int line, struct fixture *f, uint64_t base_size,
                           uint64_t new_size, const uint64_t (*changed)[2], size_t n_changed,
                           const uint64_t (*zeroed)[2], size_t n_zeroed)
{
    run_diff(f, base_size, new_size);
    assert_ranges_at(file, line, &f->out, changed, n_changed);
    assert_ranges_at(file, line, &f->out2, zeroed, n_zeroed);
}

/* ---- extent_diff_stream, extent_list_diff ----------------------------------------------- */

static void test_diff_empty(void **state)
{
    struct fixture *f = *state;
    expect_diff(f, 0, 0, NO_RANGES, NO_RANGES);
    expect_diff(f, MIB, MIB, NO_RANGES, NO_RANGES);
    expect_diff(f, 0, MIB, NO_RANGES, NO_RANGES);
    expect_diff(f, MIB, 0, NO_RANGES, NO_RANGES);
    expect_diff(f, OMAX, OMAX, NO_RANGES, NO_RANGES);

    /* Extents but a new size of zero. */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, Q, 0}));
    expect_diff(f, 4096, 0, NO_RANGES, NO_RANGES);
}

static void test_diff_identical(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 64 * KIB, P, 0}, {128 * KIB, 64 * KIB, Q, SH},
                             {256 * KIB, 4 * KIB, R, UW}));
    list_fill(&f->b, f->a.ptr, f->a.len);
    expect_diff(f, 512 * KIB, 512 * KIB, NO_RANGES, NO_RANGES);
}

static void test_diff_new_data(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->b, EXTENTS({4096, 8192, P, 0}));
    expect_diff(f, MIB, MIB, RANGES({4096, 8192}), NO_RANGES);

    list_fill(&f->a, EXTENTS({0, 64 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 64 * KIB, Q, 0}));
    expect_diff(f, 64 * KIB, 64 * KIB, RANGES({0, 64 * KIB}), NO_RANGES);
}

static void test_diff_moved(void **state)
{
    struct fixture *f = *state;
    /* The same physical blocks at other logical offsets are changed data. */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, Q, 0}, {4096, 4096, P, 0}));
    expect_diff(f, 8192, 8192, RANGES({0, 8192}), NO_RANGES);

    list_fill(&f->a, EXTENTS({0, 8192, P, 0}));
    list_fill(&f->b, EXTENTS({0, 8192, P + 1, 0}));
    expect_diff(f, 8192, 8192, RANGES({0, 8192}), NO_RANGES);
}

static void test_diff_discard(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 64 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 16 * KIB, P, 0}, {32 * KIB, 32 * KIB, P + 32 * KIB, 0}));
    expect_diff(f, 64 * KIB, 64 * KIB, NO_RANGES, RANGES({16 * KIB, 16 * KIB}));

    /* All gone. */
    extent_list_clear(&f->b);
    expect_diff(f, 64 * KIB, 64 * KIB, NO_RANGES, RANGES({0, 64 * KIB}));
}

static void test_diff_unwritten(void **state)
{
    struct fixture *f = *state;
    /* [0,8K) zero-ranged in place; [8K,16K) kept; [16K,32K) unwritten in base, written in new
     * at the very same address: data where there were zeros. */
    list_fill(&f->a, EXTENTS({0, 16 * KIB, P, 0}, {16 * KIB, 16 * KIB, Q, UW}));
    list_fill(&f->b, EXTENTS({0, 8 * KIB, P, UW}, {8 * KIB, 8 * KIB, P + 8 * KIB, 0},
                             {16 * KIB, 16 * KIB, Q, 0}));
    expect_diff(f, 32 * KIB, 32 * KIB, RANGES({16 * KIB, 16 * KIB}), RANGES({0, 8 * KIB}));

    /* Unwritten against hole or unwritten elsewhere: zeros either way. */
    list_fill(&f->a, EXTENTS({0, 8 * KIB, P, UW}));
    list_fill(&f->b, EXTENTS({0, 4 * KIB, Q, UW}, {12 * KIB, 4 * KIB, R, UW}));
    expect_diff(f, 16 * KIB, 16 * KIB, NO_RANGES, NO_RANGES);

    /* Preallocated in new over base data. */
    list_fill(&f->a, EXTENTS({0, 8 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 8 * KIB, Q, UW}));
    expect_diff(f, 8 * KIB, 8 * KIB, NO_RANGES, RANGES({0, 8 * KIB}));
}

static void test_diff_phys_unknown(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 4096, P, UK}, {4096, 4096, Q, 0}, {8192, 4096, R, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, UK}, {8192, 4096, R, 0}));
    expect_diff(f, 12288, 12288, RANGES({0, 8192}), NO_RANGES);

    list_fill(&f->a, EXTENTS({0, 4096, P, UK}));
    list_fill(&f->b, EXTENTS({0, 4096, P, UK}));
    expect_diff(f, 4096, 4096, RANGES({0, 4096}), NO_RANGES);

    /* Unknown but not data: still zeros. */
    list_fill(&f->a, EXTENTS({0, 4096, P, UW | UK}));
    list_fill(&f->b, EXTENTS({0, 4096, P, UW | UK}));
    expect_diff(f, 4096, 4096, NO_RANGES, NO_RANGES);
    list_fill(&f->a, EXTENTS({0, 4096, P, UK}));
    list_fill(&f->b, EXTENTS({0, 4096, P, UW | UK}));
    expect_diff(f, 4096, 4096, NO_RANGES, RANGES({0, 4096}));
}

static void test_diff_shared(void **state)
{
    struct fixture *f = *state;
    /* Sharing says nothing about the data: the address decides. */
    list_fill(&f->a, EXTENTS({0, 8192, P, 0}));
    list_fill(&f->b, EXTENTS({0, 8192, P, SH}));
    expect_diff(f, 8192, 8192, NO_RANGES, NO_RANGES);
    list_fill(&f->a, EXTENTS({0, 8192, P, SH}));
    list_fill(&f->b, EXTENTS({0, 8192, P, 0}));
    expect_diff(f, 8192, 8192, NO_RANGES, NO_RANGES);
    list_fill(&f->a, EXTENTS({0, 8192, P, SH}));
    list_fill(&f->b, EXTENTS({0, 8192, Q, SH}));
    expect_diff(f, 8192, 8192, RANGES({0, 8192}), NO_RANGES);
}

static void test_diff_split_boundaries(void **state)
{
    struct fixture *f = *state;
    /* Same mapping, cut into extents differently. */
    list_fill(&f->a, EXTENTS({0, 8 * KIB, P, 0}, {8 * KIB, 8 * KIB, P + 8 * KIB, 0},
                             {16 * KIB, 1, Q, 0}));
    list_fill(&f->b, EXTENTS({0, 4 * KIB, P, 0}, {4 * KIB, 12 * KIB, P + 4 * KIB, SH},
                             {16 * KIB, 1, Q, 0}));
    expect_diff(f, 16 * KIB + 1, 16 * KIB + 1, NO_RANGES, NO_RANGES);
}

/* A 4 KiB write into a big extent of a reflinked copy: btrfs splits the extent in three, the
 * outer pieces keeping their blocks. */
static void test_diff_btrfs_split(void **state)
{
    struct fixture *f = *state;
    const uint64_t size = 64 * MIB;
    const uint64_t xs[] = {0, 4 * KIB, 40 * MIB + 12 * KIB, 64 * MIB - 8 * KIB, 64 * MIB - 4 * KIB};

    for (size_t i = 0; i < ARRAY_LEN(xs); i++) {
        uint64_t x = xs[i];
        list_fill(&f->a, EXTENTS({0, size, P, 0}));
        extent_list_clear(&f->b);
        if (x > 0)
            add(&f->b, 0, x, P, 0);
        add(&f->b, x, 4 * KIB, Q, 0);
        if (x + 4 * KIB < size)
            add(&f->b, x + 4 * KIB, size - x - 4 * KIB, P + x + 4 * KIB, 0);
        expect_diff(f, size, size, RANGES({x, 4 * KIB}), NO_RANGES);

        /* And as the new file sees it after a snapshot: all shared but the new block. */
        for (size_t k = 0; k < f->b.len; k++)
            if (f->b.ptr[k].physical != Q)
                f->b.ptr[k].flags |= SH;
        expect_diff(f, size, size, RANGES({x, 4 * KIB}), NO_RANGES);
    }
}

static void test_diff_grow(void **state)
{
    struct fixture *f = *state;
    /* Past a file's size is a hole, even where an extent maps it. */
    list_fill(&f->a, EXTENTS({0, 8 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 16 * KIB, P, 0}));
    expect_diff(f, 8 * KIB, 16 * KIB, RANGES({8 * KIB, 8 * KIB}), NO_RANGES);

    list_fill(&f->a, EXTENTS({0, 16 * KIB, P, 0}));
    expect_diff(f, 8 * KIB, 16 * KIB, RANGES({8 * KIB, 8 * KIB}), NO_RANGES);

    /* Grown by a hole. */
    list_fill(&f->b, EXTENTS({0, 8 * KIB, P, 0}));
    expect_diff(f, 8 * KIB, MIB, NO_RANGES, NO_RANGES);

    /* Not block aligned. */
    list_fill(&f->a, EXTENTS({0, 8 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 8 * KIB, P, 0}));
    expect_diff(f, 5000, 8 * KIB, RANGES({5000, 8 * KIB - 5000}), NO_RANGES);
    expect_diff(f, 5000, 6000, RANGES({5000, 1000}), NO_RANGES);

    /* Grown from nothing. */
    expect_diff(f, 0, 8 * KIB, RANGES({0, 8 * KIB}), NO_RANGES);
}

static void test_diff_shrink(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({0, 64 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 16 * KIB, P, 0}, {16 * KIB, 48 * KIB, Q, 0}));
    expect_diff(f, 64 * KIB, 20000, RANGES({16 * KIB, 20000 - 16 * KIB}), NO_RANGES);

    /* Base data past the new size is not zeroed: it is cut off. */
    list_fill(&f->b, EXTENTS({0, 4 * KIB, P, 0}, {32 * KIB, 4 * KIB, R, 0}));
    expect_diff(f, 64 * KIB, 10000, NO_RANGES, RANGES({4 * KIB, 10000 - 4 * KIB}));

    /* New extents past the new size count for nothing. */
    list_fill(&f->a, EXTENTS({0, 4 * KIB, P, 0}));
    list_fill(&f->b, EXTENTS({0, 4 * KIB, P, 0}, {8 * KIB, 4 * KIB, Q, 0}, {MIB, 4 * KIB, R, 0}));
    expect_diff(f, 4 * KIB, 8 * KIB, NO_RANGES, NO_RANGES);
    expect_diff(f, 4 * KIB, 8 * KIB + 1, RANGES({8 * KIB, 1}), NO_RANGES);

    expect_diff(f, 64 * KIB, 0, NO_RANGES, NO_RANGES);
}

static void test_diff_coalesce(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->b, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}, {8192, 4096, R, UW},
                             {12288, 4096, R + 4096, 0}, {16384, 4096, R + 8192, UK}));
    expect_diff(f, 0, 20480, RANGES({0, 8192}, {12288, 8192}), NO_RANGES);

    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {4096, 4096, Q, 0}, {8192, 4096, R, 0}));
    list_fill(&f->b, EXTENTS({0, 4096, P, UW}, {8192, 4096, R, UW}));
    expect_diff(f, 12288, 12288, NO_RANGES, RANGES({0, 12288}));

    /* Changed and zeroed interleaved. */
    list_fill(&f->a, EXTENTS({0, 4096, P, 0}, {8192, 4096, Q, 0}, {16384, 4096, R, 0}));
    list_fill(&f->b, EXTENTS({4096, 4096, P, 0}, {12288, 4096, Q, 0}));
    expect_diff(f, 20480, 20480, RANGES({4096, 4096}, {12288, 4096}),
                RANGES({0, 4096}, {8192, 4096}, {16384, 4096}));
}

static void test_diff_near_max(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->a, EXTENTS({OMAX - 8192, 8192, P, 0}));
    list_fill(&f->b, EXTENTS({OMAX - 8192, 4096, P, 0}, {OMAX - 4096, 4096, Q, 0}));
    expect_diff(f, OMAX, OMAX, RANGES({OMAX - 4096, 4096}), NO_RANGES);

    extent_list_clear(&f->b);
    expect_diff(f, OMAX, OMAX, NO_RANGES, RANGES({OMAX - 8192, 8192}));
    expect_diff(f, OMAX, OMAX - 1, NO_RANGES, RANGES({OMAX - 8192, 8191}));

    list_fill(&f->a, EXTENTS({0, OMAX, P, 0}));
    list_fill(&f->b, EXTENTS({0, OMAX, P, 0}));
    expect_diff(f, OMAX, OMAX, NO_RANGES, NO_RANGES);
    expect_diff(f, 0, OMAX, RANGES({0, OMAX}), NO_RANGES);
    expect_diff(f, OMAX - 1, OMAX, RANGES({OMAX - 1, 1}), NO_RANGES);
    list_fill(&f->b, EXTENTS({0, 1, P, 0}, {OMAX - 1, 1, P + OMAX - 1, 0}));
    expect_diff(f, OMAX, OMAX, NO_RANGES, RANGES({1, OMAX - 2}));
}

static void test_diff_invalid(void **state)
{
    struct fixture *f = *state;
    static const struct {
        struct extent base[3], new[3];
        size_t nbase, nnew;
        int err;
    } cases[] = {
        {{{0, 4096, P, 0}}, {{8192, 4096, P, 0}, {0, 4096, Q, 0}}, 1, 2, -EINVAL},
        {{{0, 8192, P, 0}, {4096, 4096, Q, 0}}, {{0, 4096, P, 0}}, 2, 1, -EINVAL},
        {{{0, 4096, P, 0}, {0, 4096, P, 0}}, {{0, 4096, P, 0}}, 2, 1, -EINVAL},
        {{{0, 4096, P, 0}}, {{0, 4096, P, 0}, {4096, 0, Q, 0}}, 1, 2, -EINVAL},
        {{{0, 0, P, 0}}, {{0, 4096, P, 0}}, 1, 1, -EINVAL},
        {{{0, 4096, P, 0}}, {{0, 4096, P, 0}, {4096, UINT64_MAX - 4095, Q, 0}}, 1, 2, -ERANGE},
        {{{OMAX - 10, 11, P, 0}}, {{0, 4096, P, 0}}, 1, 1, -ERANGE},
        {{{0, 4096, P, 0}}, {{UINT64_MAX, 1, P, 0}}, 1, 1, -ERANGE},
    };

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        list_fill(&f->a, cases[i].base, cases[i].nbase);
        list_fill(&f->b, cases[i].new, cases[i].nnew);
        extent_list_clear(&f->out);
        extent_list_clear(&f->out2);
        int r = extent_list_diff(&f->a, OMAX, &f->b, OMAX, &f->out, &f->out2);
        if (r != cases[i].err)
            print_message("# case %zu: %d\n", i, r);
        assert_int_equal(r, cases[i].err);
    }

    extent_list_clear(&f->a);
    extent_list_clear(&f->b);
    assert_int_equal(extent_list_diff(&f->a, OMAX + 1, &f->b, 0, &f->out, &f->out2), -ERANGE);
    assert_int_equal(extent_list_diff(&f->a, 0, &f->b, OMAX + 1, &f->out, &f->out2), -ERANGE);
    assert_int_equal(extent_list_diff(&f->a, 0, &f->b, UINT64_MAX, &f->out, &f->out2), -ERANGE);
}

/* A source yielding a few extents, then an error. */
struct failing_source {
    size_t left;
    uint64_t pos;
};

static int failing_next(void *opaque, struct extent *e)
{
    struct failing_source *s = opaque;
    if (s->left == 0)
        return -EIO;
    s->left--;
    *e = (struct extent){.start = s->pos, .length = 4096, .physical = s->pos + P};
    s->pos += 8192;
    return 1;
}

/* A sink counting ranges and failing after a number of them. */
struct counting_sink {
    size_t count, fail_after;
    uint64_t bytes;
};

static int counting_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct counting_sink *s = opaque;
    (void)start;
    if (s->count >= s->fail_after)
        return -ENOSPC;
    s->count++;
    s->bytes += length;
    return 0;
}

static void test_diff_stream_errors(void **state)
{
    struct fixture *f = *state;
    struct extent_list_cursor cur;
    struct failing_source fs = {.left = 3};
    struct extent_source bad = {.next = failing_next, .opaque = &fs};
    struct extent_source empty = extent_list_source(&cur, &f->a);
    struct counting_sink cc = {.fail_after = SIZE_MAX}, cz = {.fail_after = SIZE_MAX};
    struct extent_sink kc = {.emit = counting_emit, .opaque = &cc};
    struct extent_sink kz = {.emit = counting_emit, .opaque = &cz};

    assert_int_equal(extent_diff_stream(&empty, MIB, &bad, MIB, &kc, &kz), -EIO);
    fs = (struct failing_source){.left = 3};
    empty = extent_list_source(&cur, &f->a);
    assert_int_equal(extent_diff_stream(&bad, MIB, &empty, MIB, &kc, &kz), -EIO);

    /* The error is not reached when the size ends the walk first. */
    fs = (struct failing_source){.left = 3};
    empty = extent_list_source(&cur, &f->a);
    cc = (struct counting_sink){.fail_after = SIZE_MAX};
    assert_int_equal(extent_diff_stream(&empty, 0, &bad, 5 * 4096, &kc, &kz), 0);
    assert_int_equal(cc.count, 3);
    assert_int_equal(cc.bytes, 3 * 4096);

    /* A failing sink stops the diff. */
    list_fill(&f->b, EXTENTS({0, 4096, P, 0}, {8192, 4096, Q, 0}, {16384, 4096, R, 0}));
    struct extent_source src = extent_list_source(&cur, &f->b);
    struct extent_list_cursor cur2;
    struct extent_source none = extent_list_source(&cur2, &f->a);
    cc = (struct counting_sink){.fail_after = 1};
    assert_int_equal(extent_diff_stream(&none, 0, &src, MIB, &kc, &kz), -ENOSPC);
    assert_int_equal(cc.count, 1);

    /* Same for the zeroed sink, here on the final flush. */
    list_fill(&f->b, EXTENTS({0, 4096, P, 0}));
    src = extent_list_source(&cur, &f->b);
    none = extent_list_source(&cur2, &f->a);
    cc = (struct counting_sink){.fail_after = SIZE_MAX};
    cz = (struct counting_sink){.fail_after = 0};
    assert_int_equal(extent_diff_stream(&src, MIB, &none, MIB, &kc, &kz), -ENOSPC);
    assert_int_equal(cz.count, 0);
}

static void test_diff_appends(void **state)
{
    struct fixture *f = *state;
    list_fill(&f->b, EXTENTS({4096, 4096, P, 0}));
    assert_int_equal(extent_list_add_range(&f->out, 0, 10), 0);
    assert_int_equal(extent_list_diff(&f->a, 0, &f->b, 8192, &f->out, &f->out2), 0);
    assert_ranges(&f->out, RANGES({0, 10}, {4096, 4096}));
    assert_int_equal(f->out2.len, 0);

    /* Output that cannot follow what is there already is an error. */
    assert_int_equal(extent_list_diff(&f->a, 0, &f->b, 8192, &f->out, &f->out2), -EINVAL);
}

/* ---- Randomized property tests ---------------------------------------------------------- */

#define RND_BLOCKS 256
#define RND_BS 4096ull
#define RND_DIFF_ROUNDS 3000

enum { BLK_HOLE, BLK_UNWRITTEN, BLK_DATA };

/* One block of a random map: its kind, physical address and extent flags. */
struct blk {
    uint8_t kind;
    uint32_t flags;
    uint64_t phys;
};

/* A fresh physical range of n blocks. */
static uint64_t alloc_phys(uint64_t *next, size_t n)
{
    uint64_t p = *next;
    *next += (n + rnd(4)) * RND_BS;
    return p;
}

static void random_base(struct blk *m, uint64_t *next)
{
    for (size_t i = 0; i < RND_BLOCKS;) {
        size_t run = 1 + rnd(32);
        if (run > RND_BLOCKS - i)
            run = RND_BLOCKS - i;
        unsigned k = rnd(100);
        uint8_t kind = k < 25 ? BLK_HOLE : k < 40 ? BLK_UNWRITTEN : BLK_DATA;
        /* Mostly fresh space; sometimes an address used elsewhere too (a clone). */
        uint64_t phys = chance(15) ? (1ull << 30) + rnd(64) * RND_BS : alloc_phys(next, run);
        uint32_t flags = (chance(20) ? EXTENT_SHARED : 0) | (chance(4) ? EXTENT_PHYS_UNKNOWN : 0);
        for (size_t j = 0; j < run; j++, i++) {
            if (kind == BLK_HOLE)
                m[i] = (struct blk){BLK_HOLE, 0, 0};
            else
                m[i] = (struct blk){kind, flags, phys + j * RND_BS};
        }
    }
}

/* The new map: base after some writes, punches, zero-ranges, preallocations, clones. */
static void random_new(struct blk *n, const struct blk *b, uint64_t *next)
{
    memcpy(n, b, RND_BLOCKS * sizeof(*n));
    if (chance(5))
        return; /* untouched */
    unsigned ops = 1 + rnd(8);
    for (unsigned op = 0; op < ops; op++) {
        size_t at = rnd(RND_BLOCKS);
        size_t len = 1 + rnd(chance(20) ? RND_BLOCKS : 16);
        if (len > RND_BLOCKS - at)
            len = RND_BLOCKS - at;
        unsigned k = rnd(100);
        if (k < 30) { /* copy-on-write rewrite */
            uint64_t p = alloc_phys(next, len);
            for (size_t j = 0; j < len; j++)
                n[at + j] = (struct blk){BLK_DATA, 0, p + j * RND_BS};
        } else if (k < 45) { /* punch hole / discard */
            for (size_t j = 0; j < len; j++)
                n[at + j] = (struct blk){BLK_HOLE, 0, 0};
        } else if (k < 55) { /* zero range: unwritten, fresh or in place */
            uint64_t p = alloc_phys(next, len);
            bool in_place = chance(50);
            for (size_t j = 0; j < len; j++) {
                if (in_place && n[at + j].kind != BLK_HOLE)
                    n[at + j].kind = BLK_UNWRITTEN;
                else
                    n[at + j] = (struct blk){BLK_UNWRITTEN, 0, p + j * RND_BS};
            }
        } else if (k < 62) { /* preallocate: holes become unwritten */
            uint64_t p = alloc_phys(next, len);
            for (size_t j = 0; j < len; j++)
                if (n[at + j].kind == BLK_HOLE)
                    n[at + j] = (struct blk){BLK_UNWRITTEN, 0, p + j * RND_BS};
        } else if (k < 70) { /* write into holes only */
            uint64_t p = alloc_phys(next, len);
            for (size_t j = 0; j < len; j++)
                if (n[at + j].kind != BLK_DATA)
                    n[at + j] = (struct blk){BLK_DATA, 0, p + j * RND_BS};
        } else if (k < 78) { /* clone a range of the file over another */
            size_t from = rnd(RND_BLOCKS - len + 1);
            struct blk tmp[RND_BLOCKS];
            memcpy(tmp, n + from, len * sizeof(*n));
            for (size_t j = 0; j < len; j++) {
                if (tmp[j].kind == BLK_DATA) {
                    tmp[j].flags |= EXTENT_SHARED;
                    n[from + j].flags |= EXTENT_SHARED;
                }
            }
            memcpy(n + at, tmp, len * sizeof(*n));
        } else if (k < 86) { /* snapshot or reflink elsewhere: mapping kept, now shared */
            for (size_t j = 0; j < len; j++)
                if (n[at + j].kind == BLK_DATA)
                    n[at + j].flags |= EXTENT_SHARED;
        } else if (k < 90) { /* addresses not reported */
            for (size_t j = 0; j < len; j++)
                if (n[at + j].kind != BLK_HOLE)
                    n[at + j].flags |= EXTENT_PHYS_UNKNOWN;
        } /* else: kept as is */
    }
}

/* Turns a block map into an extent list; extents that could be one are sometimes cut. */
static void blocks_to_list(const struct blk *m, extent_list *l)
{
    extent_list_clear(l);
    for (size_t i = 0; i < RND_BLOCKS; i++) {
        if (m[i].kind == BLK_HOLE)
            continue;
        struct extent e = {
            .start = i * RND_BS,
            .length = RND_BS,
            .physical = m[i].phys,
            .flags = m[i].flags | (m[i].kind == BLK_UNWRITTEN ? EXTENT_UNWRITTEN : 0),
        };
        struct extent *last = l->len ? &l->ptr[l->len - 1] : NULL;
        if (last && extent_end(last) == e.start && last->flags == e.flags &&
            last->physical + last->length == e.physical && !chance(15)) {
            last->length += e.length;
            continue;
        }
        assert_int_equal(extent_list_append(l, e), 0);
    }
}

static uint64_t random_size(uint64_t base_size)
{
    const uint64_t span = RND_BLOCKS * RND_BS;
    switch (rnd(7)) {
    case 0:
        return span;
    case 1:
        return rnd(RND_BLOCKS + 1) * RND_BS;
    case 2:
        return rnd(span + 2 * RND_BS);
    case 3:
        return base_size + rnd(16 * RND_BS); /* grow */
    case 4:
        return rnd(base_size + 1); /* shrink */
    case 5:
        return chance(50) ? 0 : 1 + rnd(RND_BS);
    default:
        return base_size;
    }
}

static void test_random_diff(void **state)
{
    struct fixture *f = *state;
    struct blk bm[RND_BLOCKS], nm[RND_BLOCKS];
    size_t changed = 0, zeroed = 0;

    rng_seed();
    for (int round = 0; round < RND_DIFF_ROUNDS; round++) {
        uint64_t next = 1ull << 40;
        random_base(bm, &next);
        random_new(nm, bm, &next);
        uint64_t span = RND_BLOCKS * RND_BS;
        uint64_t base_size = random_size(chance(50) ? span : rnd(span));
        uint64_t new_size = random_size(base_size);

        /* A truncation usually frees the blocks past the end; an extension writes some. */
        size_t size_blocks = (new_size + RND_BS - 1) / RND_BS;
        if (new_size < base_size && chance(60)) {
            for (size_t i = size_blocks; i < RND_BLOCKS; i++)
                nm[i] = (struct blk){BLK_HOLE, 0, 0};
        } else if (new_size > base_size && chance(60)) {
            uint64_t p = alloc_phys(&next, RND_BLOCKS);
            for (size_t i = base_size / RND_BS; i < size_blocks && i < RND_BLOCKS; i++)
                if (chance(70))
                    nm[i] = (struct blk){BLK_DATA, 0, p + i * RND_BS};
        }

        blocks_to_list(bm, &f->a);
        blocks_to_list(nm, &f->b);
        assert_int_equal(extent_list_validate(&f->a), 0);
        assert_int_equal(extent_list_validate(&f->b), 0);

        run_diff(f, base_size, new_size);
        changed += f->out.len;
        zeroed += f->out2.len;

        /* Precision, block by block: a block mapped to the same place is never changed. */
        uint64_t common = base_size < new_size ? base_size : new_size;
        for (size_t i = 0; i < RND_BLOCKS; i++) {
            uint64_t s = i * RND_BS, e = s + RND_BS < common ? s + RND_BS : common;
            bool same = bm[i].kind == BLK_DATA && nm[i].kind == BLK_DATA &&
                        bm[i].phys == nm[i].phys &&
                        !((bm[i].flags | nm[i].flags) & EXTENT_PHYS_UNKNOWN);
            CHECK(!same || !overlaps(&f->out, s, e),
                  "round %d: block %zu maps to the same place but is reported changed", round, i);
        }
    }
    print_message("# %d rounds, %zu changed ranges, %zu zeroed ranges\n", RND_DIFF_ROUNDS,
                  changed, zeroed);
}

/* The set operations against a byte map of a small space. */

#define SPACE 300
#define RND_SET_ROUNDS 3000

struct bytemap {
    bool in[SPACE + 64];
    uint32_t flags[SPACE + 64];
    uint64_t phys[SPACE + 64];
};

static void random_list(extent_list *l, bool sparse)
{
    extent_list_clear(l);
    uint64_t pos = rnd(10), phys = rnd(1000);
    for (;;) {
        uint64_t len = 1 + rnd(sparse ? 20 : 40);
        if (pos + len > SPACE)
            break;
        uint32_t flags = (chance(30) ? EXTENT_SHARED : 0) | (chance(30) ? EXTENT_UNWRITTEN : 0) |
                         (chance(10) ? EXTENT_PHYS_UNKNOWN : 0);
        if (!chance(60))
            phys = rnd(1000) + 1000;
        struct extent e = {.start = pos, .length = len, .physical = phys, .flags = flags};
        assert_int_equal(extent_list_append(l, e), 0);
        phys += len;
        pos += len + (chance(40) ? 0 : rnd(sparse ? 30 : 10));
    }
}

static void to_bytemap(const extent_list *l, struct bytemap *m)
{
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < l->len; i++) {
        const struct extent *e = &l->ptr[i];
        for (uint64_t x = e->start; x < extent_end(e); x++) {
            m->in[x] = true;
            m->flags[x] = e->flags;
            m->phys[x] = e->physical + (x - e->start);
        }
    }
}

/* out must be a valid list taking each of its bytes from a with a's attributes. */
static void check_pieces_of(const extent_list *out, const struct bytemap *a, int round)
{
    CHECK(extent_list_validate(out) == 0, "round %d: invalid result", round);
    for (size_t i = 0; i < out->len; i++) {
        const struct extent *e = &out->ptr[i];
        for (uint64_t x = e->start; x < extent_end(e); x++) {
            CHECK(a->in[x], "round %d: byte %" PRIu64 " not from a", round, x);
            CHECK(e->flags == a->flags[x], "round %d: byte %" PRIu64 " flags %#x, in a %#x", round,
                  x, e->flags, a->flags[x]);
            CHECK((e->flags & EXTENT_PHYS_UNKNOWN) ||
                      e->physical + (x - e->start) == a->phys[x],
                  "round %d: byte %" PRIu64 " at the wrong address", round, x);
        }
        /* Pieces that read as one extent are one. */
        if (i > 0) {
            const struct extent *p = &out->ptr[i - 1];
            CHECK(!(extent_end(p) == e->start && p->flags == e->flags &&
                    ((e->flags & EXTENT_PHYS_UNKNOWN) || p->physical + p->length == e->physical)),
                  "round %d: mergeable neighbours at %" PRIu64, round, e->start);
        }
    }
}

static void test_random_set_ops(void **state)
{
    struct fixture *f = *state;
    struct bytemap ma, mb, mo;

    rng_seed();
    for (int round = 0; round < RND_SET_ROUNDS; round++) {
        random_list(&f->a, chance(50));
        random_list(&f->b, chance(50));
        to_bytemap(&f->a, &ma);
        to_bytemap(&f->b, &mb);

        uint64_t count = 0;
        for (int x = 0; x < SPACE; x++)
            count += ma.in[x];
        assert_int_equal(extent_list_bytes(&f->a), count);

        /* intersect */
        extent_list_clear(&f->out);
        assert_int_equal(extent_list_intersect(&f->a, &f->b, &f->out), 0);
        to_bytemap(&f->out, &mo);
        for (int x = 0; x < SPACE; x++)
            CHECK(mo.in[x] == (ma.in[x] && mb.in[x]), "round %d: intersect at %d", round, x);
        check_pieces_of(&f->out, &ma, round);

        /* subtract */
        extent_list_clear(&f->out);
        assert_int_equal(extent_list_subtract(&f->a, &f->b, &f->out), 0);
        to_bytemap(&f->out, &mo);
        for (int x = 0; x < SPACE; x++)
            CHECK(mo.in[x] == (ma.in[x] && !mb.in[x]), "round %d: subtract at %d", round, x);
        check_pieces_of(&f->out, &ma, round);

        /* squash */
        list_fill(&f->out, f->a.ptr, f->a.len);
        assert_int_equal(extent_list_squash(&f->out), 0);
        assert_int_equal(extent_list_validate(&f->out), 0);
        to_bytemap(&f->out, &mo);
        for (int x = 0; x < SPACE; x++) {
            CHECK(mo.in[x] == ma.in[x], "round %d: squash coverage at %d", round, x);
            if (!ma.in[x])
                continue;
            CHECK((mo.flags[x] & UW) == (ma.flags[x] & UW), "round %d: squash kind at %d", round,
                  x);
            CHECK(!(ma.flags[x] & SH) || (mo.flags[x] & SH), "round %d: squash lost shared at %d",
                  round, x);
            CHECK((mo.flags[x] & UK) || (mo.phys[x] == ma.phys[x] && !(ma.flags[x] & UK)),
                  "round %d: squash address at %d", round, x);
        }
        for (size_t i = 0; i < f->out.len; i++) {
            const struct extent *e = &f->out.ptr[i];
            CHECK(ma.in[e->start] && e->physical == ma.phys[e->start],
                  "round %d: squash did not keep the first address", round);
            CHECK(i == 0 || extent_end(&f->out.ptr[i - 1]) < e->start ||
                      (f->out.ptr[i - 1].flags & UW) != (e->flags & UW),
                  "round %d: squash left same-kind neighbours at %" PRIu64, round, e->start);
            /* Unknown only when the pieces really were not one run. */
            bool run = true;
            for (uint64_t x = e->start; x < extent_end(e); x++)
                run = run && !(ma.flags[x] & UK) && ma.phys[x] == e->physical + (x - e->start);
            CHECK(!(e->flags & UK) || !run, "round %d: squash lost a contiguous address",
                  round);
        }

        /* align */
        uint64_t chunk = 1 + rnd(chance(50) ? 16 : 64);
        uint64_t limit = chance(30) ? OMAX : rnd(SPACE + 32);
        list_fill(&f->out, f->a.ptr, f->a.len);
        assert_int_equal(extent_list_align(&f->out, chunk, limit), 0);
        assert_int_equal(extent_list_validate(&f->out), 0);
        bool want[SPACE + 64] = {false};
        for (size_t i = 0; i < f->a.len; i++) {
            const struct extent *e = &f->a.ptr[i];
            if (e->start >= limit)
                continue; /* wholly past the limit: dropped */
            uint64_t s = e->start / chunk * chunk;
            uint64_t end = (extent_end(e) + chunk - 1) / chunk * chunk;
            if (end > limit)
                end = limit;
            for (uint64_t x = s; x < end; x++)
                want[x] = true;
        }
        to_bytemap(&f->out, &mo);
        for (int x = 0; x < SPACE + 64; x++) {
            CHECK(mo.in[x] == want[x], "round %d: align chunk %" PRIu64 " limit %" PRIu64
                  " at %d: %d", round, chunk, limit, x, mo.in[x]);
            if (mo.in[x] && ma.in[x] && !(ma.flags[x] & UW))
                CHECK(!(mo.flags[x] & UW), "round %d: align made data unwritten at %d", round, x);
            if (mo.in[x] && !(mo.flags[x] & UK))
                CHECK(ma.in[x] && !(ma.flags[x] & UK) && mo.phys[x] == ma.phys[x],
                      "round %d: align kept a wrong address at %d", round, x);
        }
        for (size_t i = 1; i < f->out.len; i++)
            CHECK(extent_end(&f->out.ptr[i - 1]) < f->out.ptr[i].start,
                  "round %d: align left touching extents", round);
    }
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_validate_empty),
        T(test_validate_sorted_adjacent),
        T(test_validate_zero_length),
        T(test_validate_overlap),
        T(test_validate_unsorted),
        T(test_validate_range),
        T(test_add_merge),
        T(test_add_reject),
        T(test_add_near_max),
        T(test_add_capacity_limit),
        T(test_add_range),
        T(test_list_source_sink),
        T(test_squash_empty),
        T(test_squash_contiguous),
        T(test_squash_discontiguous),
        T(test_squash_kinds),
        T(test_squash_shared),
        T(test_squash_near_max),
        T(test_squash_invalid),
        T(test_intersect_basic),
        T(test_intersect_empty),
        T(test_intersect_many),
        T(test_intersect_near_max),
        T(test_intersect_invalid),
        T(test_subtract_basic),
        T(test_subtract_edges),
        T(test_subtract_invalid),
        T(test_align_aligned),
        T(test_align_round),
        T(test_align_limit),
        T(test_align_unaligned_limit),
        T(test_align_near_max),
        T(test_align_invalid),
        T(test_bytes),
        T(test_find),
        T(test_diff_empty),
        T(test_diff_identical),
        T(test_diff_new_data),
        T(test_diff_moved),
        T(test_diff_discard),
        T(test_diff_unwritten),
        T(test_diff_phys_unknown),
        T(test_diff_shared),
        T(test_diff_split_boundaries),
        T(test_diff_btrfs_split),
        T(test_diff_grow),
        T(test_diff_shrink),
        T(test_diff_coalesce),
        T(test_diff_near_max),
        T(test_diff_invalid),
        T(test_diff_stream_errors),
        T(test_diff_appends),
        T(test_random_diff),
        T(test_random_set_ops),
    };
#undef T
    return cmocka_run_group_tests_name("extent", tests, NULL, NULL);
}
