/* Cleanup when the command line is interrupted: while armed, SIGINT, SIGTERM and SIGHUP run a
 * cleanup function (remove a temporary file, stop a child) and then kill the process with the
 * same signal, as if nothing had caught it. */
#ifndef VMEXPORT_CLI_SIGNALS_H
#define VMEXPORT_CLI_SIGNALS_H

/* Arm: cleanup runs in the signal handler, so it may only call async-signal-safe functions
 * (unlink, rmdir, kill) on data it reads from static storage. */
void cli_signals_arm(void (*cleanup)(void));
/* Disarm: the previous handlers are back. */
void cli_signals_disarm(void);

#endif
