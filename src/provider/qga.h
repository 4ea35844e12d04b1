/* Guest agent client: freezes and thaws a guest's filesystems through qemu-guest-agent.
 *
 * The agent listens on the virtio-serial port org.qemu.guest_agent.0, which QEMU (or libvirt)
 * exposes on the host as a unix socket.  The stream may hold leftovers of an earlier client, so
 * a session starts with 0xFF and guest-sync-delimited with a random ID and skips everything
 * until the agent echoes it; every command then carries an "id" and only the reply with that
 * ID counts.  Every call has a timeout: a hung agent never hangs the daemon.
 *
 * qga_freeze_begin / qga_freeze_end wrap a snapshot: they thaw on every path (a failed or
 * timed-out freeze is thawed before qga_freeze_begin returns; a thaw that cannot be confirmed is
 * kept trying in the background), and the guest is thawed at exit() as a last resort.
 */
#ifndef VMEXPORT_PROVIDER_QGA_H
#define VMEXPORT_PROVIDER_QGA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QGA_TIMEOUT_MS_DEFAULT 10000 /* freeze timeout: an ext4 froze in 61-85 ms under TCG */
#define QGA_MSG_MAX            65536 /* bytes of one agent reply we read (ours are < 1 KiB) */

struct qga;

/* Connect to the agent socket at path and do the sync handshake, within timeout_ms. */
int qga_open(const char *path, int timeout_ms, struct qga **out, char *err, size_t errlen);
void qga_close(struct qga *g);

/* guest-fsfreeze-freeze / -thaw: *count = filesystems frozen / thawed (may be NULL). */
int qga_freeze(struct qga *g, int timeout_ms, int *count, char *err, size_t errlen);
int qga_thaw(struct qga *g, int timeout_ms, int *count, char *err, size_t errlen);
/* guest-fsfreeze-status: *frozen. */
int qga_status(struct qga *g, int timeout_ms, bool *frozen, char *err, size_t errlen);

/* One freeze around a snapshot. */
struct qga_freeze {
    struct qga *g;
    int64_t t_frozen_ns; /* CLOCK_MONOTONIC when the freeze was sent */
    uint64_t frozen_us;  /* out of qga_freeze_end: from the freeze sent to the thaw confirmed */
    int count;           /* filesystems frozen */
};

/* Connect, sync and freeze the guest's filesystems.  On failure (err says why: no agent, a
 * timeout, the agent's error) the guest is thawed again before this returns (or, when the agent
 * does not answer in time, thawed in the background as soon as it does). */
int qga_freeze_begin(struct qga_freeze *f, const char *path, int timeout_ms, char *err,
                     size_t errlen);
/* Thaw, check guest-fsfreeze-status says thawed, set frozen_us and close.  0, or a negative
 * errno with err saying why (the thaw is still retried in the background then). */
int qga_freeze_end(struct qga_freeze *f, int timeout_ms, char *err, size_t errlen);

/* The agent socket of VM vm_id among the paths glob pattern matches: the one whose base name
 * without its extension is vm_id ("/run/qga/web1.sock" for "web1").  0 and *path (malloc'ed),
 * or -ENOENT when none matches (the VM has no agent: snapshots are not frozen). */
int qga_socket_find(const char *pattern, const char *vm_id, char **path);

/* ---- the protocol's pure parts (unit-tested) ---- */

/* Appends n bytes the agent sent to a line buffer and takes out complete messages: one
 * message per '\n', with any 0xFF delimiter bytes and leading junk before the last 0xFF
 * dropped.  A message longer than QGA_MSG_MAX is junk: dropped up to its end. */
struct qga_framer {
    char buf[QGA_MSG_MAX];
    size_t len;
    bool overflow; /* dropping bytes until the next '\n' */
};
/* The next complete message (NUL-terminated in the framer's buffer, valid until the next
 * call), or NULL when more bytes are needed; *consumed bytes of data were taken. */
const char *qga_framer_next(struct qga_framer *fr, const char *data, size_t n, size_t *consumed);
/* The request for command (args: a JSON object text or NULL) with the ID id, as one line. */
char *qga_request(const char *command, const char *args_json, const char *id);
/* What a reply line says: 1 when it answers ID id (or, for sync_id != 0, is the sync reply
 * returning sync_id) with *ret (a JSON text, malloc'ed) or an error (negative errno: -EPROTO,
 * err holds the agent's description); 0 when the line is something else (junk, another reply). */
int qga_reply_match(const char *line, const char *id, int64_t sync_id, char **ret, char *err,
                    size_t errlen);

#endif
