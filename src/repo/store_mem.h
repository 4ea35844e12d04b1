/* A store in memory (store_mem.c), for tests: the whole repository in a table of objects, with
 * leases on a clock the test can move, and fault injection to run every step of a backup, gc,
 * prune or verify into a failure or a crash:
 *
 *   store_mem_fault(s, STORE_FAULT_PUT, 3);   the 3rd put from now fails (-EIO)
 *   store_mem_fault(s, STORE_FAULT_TEAR, 1);  the next put crashes halfway
 *
 * A crash (STORE_FAULT_TEAR, store_mem_crash) leaves what a crashed process leaves in a real
 * store: the torn object's first half and every staged object's bytes under "<key>.tmp.<n>"
 * names (never under their keys), every lease the process held still held until it expires,
 * and every later call failing with -EIO until store_mem_restart(), which starts a "new
 * process".  Puts and commits count as writes for the fault counters (one commit is one call,
 * whatever it holds).  store_mem_requests() counts what the calls would cost a remote store.
 */
#ifndef VMEXPORT_REPO_STORE_MEM_H
#define VMEXPORT_REPO_STORE_MEM_H

#include <stdbool.h>
#include <stdint.h>

#include "repo/store.h"

enum store_fault {
    STORE_FAULT_NONE,
    STORE_FAULT_PUT,    /* the Nth put or stage fails with -EIO, nothing written */
    STORE_FAULT_GET,    /* the Nth get fails with -EIO */
    STORE_FAULT_COMMIT, /* the Nth commit fails with -EIO after making half its objects visible */
    STORE_FAULT_DEL,    /* the Nth delete fails with -EIO */
    STORE_FAULT_TEAR,   /* the Nth put or stage is torn: half its bytes under a .tmp. name,
                           then the process crashes */
    STORE_FAULT_NOSPC,  /* the Nth put, stage or commit, and every one after, fails -ENOSPC */
    STORE_FAULT_CRASH,  /* the Nth write (put, stage, commit, delete) crashes before it acts */
};

int store_mem_new(const char *name, struct store **out);
/* Arm fault f at the nth matching call from now (n >= 1); STORE_FAULT_NONE (or n 0) disarms.
 * One fault is armed at a time. */
void store_mem_fault(struct store *s, enum store_fault f, unsigned n);
/* Whether the armed fault has fired since it was armed. */
bool store_mem_fault_fired(const struct store *s);
/* Crash now (see above). */
void store_mem_crash(struct store *s);
/* After a crash: a new process.  Leases of the crashed one stay until they expire. */
void store_mem_restart(struct store *s);
/* Move the store's lease clock forward (leases expire on it). */
void store_mem_advance(struct store *s, unsigned seconds);
/* Requests a remote store would get: every get, stat, put, committed object, listing page,
 * delete and lock call (not stages, prefixes or barriers, which cost nothing there).  All of
 * them (prefix NULL), or those on keys whose first component is prefix ("index", "packs"). */
uint64_t store_mem_requests(const struct store *s, const char *prefix);
void store_mem_requests_reset(struct store *s);
/* Objects stored (not prefixes), and their total bytes. */
void store_mem_usage(const struct store *s, uint64_t *objects, uint64_t *bytes);

#endif
