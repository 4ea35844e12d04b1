/* Cleanup when the process is interrupted: while armed, SIGINT, SIGTERM and SIGHUP run a
 * cleanup function (remove a temporary file, stop a child) and then kill the process with the
 * same signal, as if nothing had caught it.  For one piece of work at a time (the command
 * line's chain commands, the restore engine's staged disks). */
#ifndef VMEXPORT_CORE_SIGNALS_H
#define VMEXPORT_CORE_SIGNALS_H

#include <stdbool.h>

/* Arm: cleanup runs in the signal handler, so it may only call async-signal-safe functions
 * (unlink, rmdir, kill) on data it reads from static storage. */
void signals_cleanup_arm(void (*cleanup)(void));
/* Disarm: the previous handlers are back. */
void signals_cleanup_disarm(void);
/* Block (or unblock) those signals in the calling thread: a step that must complete or be
 * undone (moving files into place) runs with them blocked; a signal that came meanwhile is
 * delivered when they are unblocked. */
void signals_cleanup_block(bool block);

#endif
