/* A QMP client (QEMU Machine Protocol: JSON over a unix socket) for the providers that drive
 * running QEMU processes (qemu.c) and qemu-storage-daemon.
 *
 * One struct qmp is one connection, used by one thread at a time.  qmp_connect reads the
 * greeting and negotiates capabilities; qmp_execute sends a command and returns its answer,
 * setting aside the asynchronous events that arrive in between so that qmp_wait_event can
 * find them later.  Every read has a deadline; the descriptor is close-on-exec.
 */
#ifndef VMEXPORT_PROVIDER_QMP_H
#define VMEXPORT_PROVIDER_QMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define QMP_TIMEOUT_MS_DEFAULT 10000 /* answers of a busy QEMU under TCG come in milliseconds */
#define QMP_ERROR_CLASS_MAX    64

struct qmp;

/* Connect to the QMP monitor at path, read its greeting and send qmp_capabilities, all within
 * timeout_ms (0: QMP_TIMEOUT_MS_DEFAULT), which also bounds every later read.  err says why
 * not (no such socket, not QMP, no answer in time: another client holds the monitor). */
int qmp_connect(const char *path, unsigned timeout_ms, struct qmp **out, char *err, size_t errlen);
void qmp_close(struct qmp *q);

/* The connection's descriptor (tests check its flags). */
int qmp_fd(const struct qmp *q);

/* Run cmd with args (a JSON object, stolen; NULL: none).  0 and *ret (a new reference to the
 * "return" value; ret may be NULL) or a negative errno with err saying "cmd: Class: desc":
 * -ENOENT for DeviceNotFound, -EOPNOTSUPP for CommandNotFound, -EIO for other QMP errors,
 * -ETIMEDOUT, -ECONNRESET, -EPROTO for an answer that is not QMP.  The class of the last QMP
 * error is in qmp_error_class. */
int qmp_execute(struct qmp *q, const char *cmd, json_t *args, json_t **ret, char *err,
                size_t errlen);
const char *qmp_error_class(const struct qmp *q);

/* Wait up to timeout_ms for the event name whose data match (NULL: any), looking first at
 * the events set aside by qmp_execute.  0 and *data (a new reference, data may be NULL), or
 * -ETIMEDOUT. */
typedef bool (*qmp_event_match_fn)(json_t *data, void *opaque);
int qmp_wait_event(struct qmp *q, const char *name, qmp_event_match_fn match, void *opaque,
                   unsigned timeout_ms, json_t **data);

/* Forget the events set aside so far. */
void qmp_events_clear(struct qmp *q);

#endif
