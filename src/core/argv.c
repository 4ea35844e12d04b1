/* Shell-like word splitting without a shell; see argv.h.
 *
 * One pass over the string builds each word in a buffer as long as the input (a word is never
 * longer than its source) and appends it when a blank or the end closes it.  "" and '' make an
 * empty word, as in sh.
 */
#include "argv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"

/* Characters that only mean something to a shell, refused outside quotes. */
#define ARGV_SHELL_CHARS "$`|&;<>()"

static int __attribute__((format(printf, 3, 4)))
argv_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

void argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **a = argv; *a; a++)
        free(*a);
    free(argv);
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int argv_split(const char *s, char ***argv_out, size_t *argc_out, char *err, size_t errlen)
{
    size_t len = strlen(s);
    CLEANUP_FREE char *word = malloc(len + 1);
    char **argv = calloc(ARGV_MAX_WORDS + 1, sizeof(*argv));
    size_t argc = 0, n = 0;
    bool in_word = false;
    int r = 0;

    if (!word || !argv) {
        free(argv);
        return -ENOMEM;
    }
    for (size_t i = 0; i <= len && r == 0; i++) {
        char c = s[i];
        if (c == '\0' || is_blank(c)) {
            if (!in_word)
                continue;
            if (argc == ARGV_MAX_WORDS) {
                r = argv_fail(err, errlen, "more than %d words", ARGV_MAX_WORDS);
                break;
            }
            word[n] = '\0';
            if (!(argv[argc] = strdup(word))) {
                r = -ENOMEM;
                break;
            }
            argc++;
            n = 0;
            in_word = false;
            continue;
        }
        if (c == '#' && !in_word) {
            r = argv_fail(err, errlen, "'#' starts a shell comment; quote it");
            break;
        }
        in_word = true;
        if (c == '\'') {
            const char *end = strchr(s + i + 1, '\'');
            if (!end) {
                r = argv_fail(err, errlen, "unterminated single quote");
                break;
            }
            size_t m = (size_t)(end - (s + i + 1));
            memcpy(word + n, s + i + 1, m);
            n += m;
            i = (size_t)(end - s);
        } else if (c == '"') {
            for (i++;; i++) {
                if (s[i] == '\0') {
                    r = argv_fail(err, errlen, "unterminated double quote");
                    break;
                }
                if (s[i] == '"')
                    break;
                if (s[i] == '$' || s[i] == '`') {
                    r = argv_fail(err, errlen,
                                  "'%c' in double quotes needs a shell, and hooks run without "
                                  "one; quote it with '' or \\",
                                  s[i]);
                    break;
                }
                if (s[i] == '\\' && s[i + 1] == '\n') {
                    i++;
                    continue;
                }
                if (s[i] == '\\' && s[i + 1] && strchr("\"\\$`", s[i + 1]))
                    i++;
                word[n++] = s[i];
            }
        } else if (c == '\\') {
            if (s[i + 1] == '\0') {
                r = argv_fail(err, errlen, "a backslash at the end");
                break;
            }
            i++;
            if (s[i] != '\n')
                word[n++] = s[i];
        } else if (strchr(ARGV_SHELL_CHARS, c)) {
            r = argv_fail(err, errlen,
                          "'%c' needs a shell, and hooks run without one (the VM ID is the "
                          "last argument and $VMEXPORT_VM_ID); quote it to pass it literally",
                          c);
        } else {
            word[n++] = c;
        }
    }
    if (r == 0 && argc == 0)
        r = argv_fail(err, errlen, "no command");
    if (r < 0) {
        argv_free(argv);
        return r;
    }
    *argv_out = argv;
    *argc_out = argc;
    return 0;
}
