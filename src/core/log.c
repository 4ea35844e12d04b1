/* Logging: one line per message on stderr, "program: message". */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

static const char *log_program = "vmexport";
static enum log_level log_level = LOG_LEVEL_WARN;

void log_init(const char *program, enum log_level level)
{
    log_program = program;
    log_level = level;
}

void log_set_level(enum log_level level)
{
    log_level = level;
}

enum log_level log_get_level(void)
{
    return log_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const prefix[] = {"", "warning: ", "", "debug: "};
    if (level > log_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr);
    fprintf(stderr, "%s: %s", log_program, prefix[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}
