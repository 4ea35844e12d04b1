/* Prune policies: which backups of a VM to keep (restic's semantics for --keep-last, -daily,
 * -weekly and -monthly), and repo_prune(), which deletes the others under the exclusive lock.
 *
 * Backups are taken newest first.  keep_last keeps the first N.  Each of the other rules walks
 * the same order, keeping a backup when its period (UTC day, ISO week, calendar month) differs
 * from the period of the last backup that rule kept, until it has kept N: so it keeps the newest
 * backup of each of the newest N periods that have one.  A backup is kept when any rule keeps it.
 */
#include "repo_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/cleanup.h"
#include "core/log.h"

/* Period numbers: year * YEAR_SCALE + ... keeps them distinct and ordered. */
#define DAY_YEAR_SCALE   10000 /* YYYYMMDD */
#define DAY_MONTH_SCALE  100
#define WEEK_YEAR_SCALE  100 /* GGGGVV (ISO year and week) */
#define MONTH_YEAR_SCALE 100 /* YYYYMM */
#define TM_YEAR_BASE     1900
#define WEEK_TEXT_LEN    16 /* "%G-%V" of any year */

enum period { PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH, PERIOD_COUNT };

struct prune_item {
    int64_t time;
    size_t index;
};

/* Newest first; equal times: the later in the input first. */
static int item_cmp(const void *a, const void *b)
{
    const struct prune_item *x = a, *y = b;
    if (x->time != y->time)
        return x->time > y->time ? -1 : 1;
    return x->index > y->index ? -1 : x->index < y->index;
}

static bool period_of(int64_t t, enum period p, int64_t *out)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if ((int64_t)tt != t || !gmtime_r(&tt, &tm))
        return false;
    int64_t year = (int64_t)tm.tm_year + TM_YEAR_BASE;
    switch (p) {
    case PERIOD_DAY:
        *out = year * DAY_YEAR_SCALE + (tm.tm_mon + 1) * DAY_MONTH_SCALE + tm.tm_mday;
        return true;
    case PERIOD_WEEK: {
        /* The ISO week-numbering year differs from the calendar year around New Year. */
        char buf[WEEK_TEXT_LEN];
        long long iso_year;
        int week;
        if (!strftime(buf, sizeof(buf), "%G-%V", &tm) ||
            sscanf(buf, "%lld-%d", &iso_year, &week) != 2)
            return false;
        *out = (int64_t)iso_year * WEEK_YEAR_SCALE + week;
        return true;
    }
    case PERIOD_MONTH:
        *out = year * MONTH_YEAR_SCALE + tm.tm_mon + 1;
        return true;
    default:
        return false;
    }
}

void prune_select(const int64_t *times, size_t n, const struct prune_policy *p, bool *keep)
{
    if (!n)
        return;
    struct prune_item *items = calloc(n, sizeof(*items));
    if (!items) {
        /* Cannot decide: keeping everything is the only safe answer. */
        for (size_t i = 0; i < n; i++)
            keep[i] = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        items[i] = (struct prune_item){.time = times[i], .index = i};
        keep[i] = false;
    }
    qsort(items, n, sizeof(*items), item_cmp);

    unsigned left[PERIOD_COUNT] = {p->keep_daily, p->keep_weekly, p->keep_monthly};
    int64_t last[PERIOD_COUNT] = {0};
    bool have_last[PERIOD_COUNT] = {false};
    for (size_t k = 0; k < n; k++) {
        size_t i = items[k].index;
        if (k < p->keep_last)
            keep[i] = true;
        for (int per = 0; per < PERIOD_COUNT; per++) {
            int64_t v;
            if (!left[per] || !period_of(items[k].time, (enum period)per, &v))
                continue;
            if (have_last[per] && v == last[per])
                continue;
            keep[i] = true;
            last[per] = v;
            have_last[per] = true;
            left[per]--;
        }
    }
    free(items);
}

/* ---- repo_prune ---- */

static int backup_vm_cmp(const struct backup **a, const struct backup **b)
{
    int c = strcmp((*a)->vm_id, (*b)->vm_id);
    if (c)
        return c;
    if ((*a)->time != (*b)->time)
        return (*a)->time < (*b)->time ? -1 : 1;
    return strcmp((*a)->id, (*b)->id);
}

/* Prune the backups l[from, to) of one VM, oldest first. */
static int prune_vm(struct repo *r, backup_list *l, size_t from, size_t to,
                    const struct prune_policy *p, bool dry_run, backup_list *removed, char *err,
                    size_t errlen)
{
    size_t n = to - from;
    CLEANUP_FREE int64_t *times = calloc(n, sizeof(*times));
    CLEANUP_FREE bool *keep = calloc(n, sizeof(*keep));
    if (!times || !keep)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        times[i] = l->ptr[from + i]->time;
    prune_select(times, n, p, keep);
    for (size_t i = 0; i < n; i++) {
        struct backup **b = &l->ptr[from + i];
        if (keep[i])
            continue;
        if (!dry_run) {
            int ret = lock_check(r);
            if (ret < 0) {
                repo_set_err(err, errlen,
                             "%s: prune stopped: the repository lock's lease was lost (stalled "
                             "or cut off from the store for more than %u s)",
                             r->path, repo_lease_seconds());
                return ret;
            }
            ret = repo_backup_delete(r, (*b)->id);
            if (ret == -EACCES) {
                /* Retained by the store (S3 Object Lock, --lock-days): kept, and said so. */
                log_warn("%s: backup %s is kept: the store refuses to delete it (retained by "
                         "its object lock, or not allowed to these keys)",
                         r->path, (*b)->id);
                continue;
            }
            if (ret < 0 && ret != -ENOENT) {
                repo_set_err(err, errlen, "%s: cannot delete backup %s: %s", r->path, (*b)->id,
                             strerror(-ret));
                return ret;
            }
        }
        if (removed) {
            int ret = backup_list_append(removed, *b);
            if (ret < 0)
                return ret;
            *b = NULL; /* now owned by removed */
        }
    }
    return 0;
}

int repo_prune(struct repo *r, const char *vm_id, const struct prune_policy *p,
               unsigned lock_timeout, bool dry_run, backup_list *removed, char *err, size_t errlen)
{
    backup_list l = VECTOR_INIT;

    if (removed)
        *removed = l;
    if (!p->keep_last && !p->keep_daily && !p->keep_weekly && !p->keep_monthly) {
        repo_set_err(err, errlen,
                     "the prune policy keeps nothing: refusing to delete every "
                     "backup");
        return -EINVAL;
    }
    int ret = dry_run ? 0 : repo_check_writable(r, err, errlen);
    if (ret < 0)
        return ret;
    ret = repo_lock(r, true, lock_timeout, err, errlen);
    if (ret < 0)
        return ret;
    ret = repo_backup_list(r, vm_id, &l);
    if (ret < 0)
        repo_set_err(err, errlen, "%s: cannot list the backups: %s", r->path, strerror(-ret));
    backup_list_sort(&l, backup_vm_cmp);
    for (size_t from = 0, to; ret == 0 && from < l.len; from = to) {
        for (to = from + 1; to < l.len && !strcmp(l.ptr[to]->vm_id, l.ptr[from]->vm_id); to++)
            ;
        ret = prune_vm(r, &l, from, to, p, dry_run, removed, err, errlen);
    }
    backup_list_free(&l); /* backup_free(NULL) skips the ones handed to removed */
    repo_unlock(r);
    return ret;
}
